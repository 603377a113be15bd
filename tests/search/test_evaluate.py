"""search/evaluate.py: the device-dependent calibration batch size."""

import torch


def test_calibration_batch_size_is_gpu_sized_on_cuda_only() -> None:
    from lightning_nas.search.evaluate import GPU_CALIB_BATCH_SIZE, calibration_batch_size

    net = torch.nn.Linear(2, 2)
    assert calibration_batch_size(None, net) is None  # CPU: the loader's batch size
    assert calibration_batch_size(96, net) == 96
    meta = torch.nn.Linear(2, 2, device="meta")  # a device that is not CUDA either
    assert calibration_batch_size(None, meta) is None
    if torch.cuda.is_available():
        assert calibration_batch_size(None, net.cuda()) == GPU_CALIB_BATCH_SIZE
