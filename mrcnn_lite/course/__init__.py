"""mrcnn_lite.course"""
