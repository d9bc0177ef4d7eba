"""Placeholder: AnchorExplorer is being written (see the open issues)."""


class AnchorExplorer:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("AnchorExplorer is not written yet")
