"""mrcnn_lite.viz"""
