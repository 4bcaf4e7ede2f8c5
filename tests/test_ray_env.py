"""ecomtl/ray_env.py: what every Ray that ecomtl starts is started with."""

from ecomtl.ray_env import SERVE_FAST_PATH, serve_fast_path_defaults


def test_serve_throughput_mode_is_the_default_and_the_user_can_turn_it_off(monkeypatch):
    for key in SERVE_FAST_PATH:
        monkeypatch.delenv(key, raising=False)
    assert serve_fast_path_defaults() == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    monkeypatch.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")
    assert serve_fast_path_defaults() == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}

