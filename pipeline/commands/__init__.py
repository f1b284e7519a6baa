"""The commands behind `tans` (one module each); `pipeline.cli` parses and dispatches."""
