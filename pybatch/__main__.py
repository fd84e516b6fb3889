from pybatch.cli import entrypoint

entrypoint()
