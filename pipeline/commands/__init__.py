"""The commands behind `tans` (one module each); `tans.pipeline.cli` parses and dispatches."""
