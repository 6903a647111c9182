"""One module per CLI subcommand: HELP, DESCRIPTION, add_arguments(parser), run(args, ui) -> dict."""
