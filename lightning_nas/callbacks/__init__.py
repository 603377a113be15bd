"""lightning_nas.callbacks"""
