"""mrcnn_lite.engine"""
