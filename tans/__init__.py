"""tans: task-adaptive neural network search over a model zoo.

The public, stable API (changes only with a major version):

    import tans
    zoo = tans.open_zoo("s3://bucket/zoo")      # or a local directory
    zoo.results()                               # a pyarrow Table, one row per network
    net = tans.load_network(zoo, job_id)         # a torch.nn.Module: net(x), net.preprocess(images),
                                                 # net.predict(images) -> class names, net.config
    tans.export_network(zoo, job_id, "out/")     # model.safetensors, config.json, README.md, model.pt2
    zoo.search("my_dataset/", top_k=5)           # ranked networks (SearchResult with Hit records)

`tans.__version__` is the installed version. `import tans` and `zoo.results()` do not import
torch; networks, export and search do. Everything else (the `pipeline`, `workers`,
`retriever` and `zoo_schema` packages) is internal and may change between versions; the
command line (`tans --help`) and the zoo format (README "The zoo") are stable too.
"""

from tans.api import Zoo, __getattr__, __version__, export_network, load_network, open_zoo  # noqa: F401
