"""One module per build stage; `hadmc_deploy.build.pipeline` composes them in order."""
