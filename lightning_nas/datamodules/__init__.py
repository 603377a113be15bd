"""lightning_nas.datamodules"""
