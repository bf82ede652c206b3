"""Tests hold fp32 to fp32: torch's TF32 switches (cuDNN convolutions default to TF32 on Ampere and later GPUs) are off
inside every test, set by the autouse fixture in ``conftest.py``; the GPU parity tolerances (1e-4 / 1e-3) assume it."""

from conftest import _tf32_flags, tf32_enabled


def test_tf32_is_off_inside_tests():
    assert not tf32_enabled()
    for obj, name in _tf32_flags():
        assert getattr(obj, name) is False, (obj, name)


def test_tf32_check_sees_the_cudnn_default():
    """The check itself can fail: with torch's default cuDNN setting switched back on, it reports TF32."""
    flags = _tf32_flags()
    obj, name = flags[0]  # cuDNN convolutions
    saved = getattr(obj, name)
    try:
        setattr(obj, name, True)
        assert tf32_enabled()
    finally:
        setattr(obj, name, saved)
