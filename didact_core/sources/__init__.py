from .base import RawBlock, TelemetrySource, day_bounds

__all__ = ["RawBlock", "TelemetrySource", "day_bounds"]
