"""lightning_nas.cost"""
