"""Experiment configs (ml_collections), one module per entry point; presets by name."""


def check_preset(preset: str, presets: tuple[str, ...]) -> None:
    """Raises a ValueError naming the unknown ``preset`` and the valid ones."""
    if preset not in presets:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {presets}.")
