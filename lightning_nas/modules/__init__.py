"""lightning_nas.modules"""
