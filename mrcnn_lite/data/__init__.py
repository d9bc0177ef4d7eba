"""mrcnn_lite.data"""
