"""Placeholder: RoIAlignExplorer is being written (see the open issues)."""


class RoIAlignExplorer:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("RoIAlignExplorer is not written yet")
