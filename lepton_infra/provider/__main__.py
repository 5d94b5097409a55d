"""`python -m lepton_infra.provider`: serve the component package (what provider/__main__.py runs)."""

from lepton_infra.provider import serve

if __name__ == "__main__":
    serve()
