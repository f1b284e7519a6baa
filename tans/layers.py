"""The folders of the repository that install as `tans.<name>`, bottom layer first. The one
list of them: `setup.py` maps each folder to its package, `tans submit` ships them, and
`tests/test_layers.py` checks the import rule over them. Imports nothing."""

LAYERS = ("zoo_schema", "workers", "retriever", "pipeline")
