"""The build: an engine of cached stages (`engine.py`), one module per stage (`stages/`),
and the pipeline that composes them (`pipeline.py`)."""
