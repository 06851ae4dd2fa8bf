"""The built-in example application: lesions on CT (bring your own model with ``--model``)."""

from __future__ import annotations

from sobre.apps._app import App, AppConfig, AppModel
from sobre.apps._rules import Accept

LESION = ("52988006", "SCT", "Lesion")
ABNORMAL = ("49755003", "SCT", "Morphologically Abnormal Structure")


def ct_lesions() -> App:
    """CT lesion segmentation: SEG (BINARY), a TID 1500 SR (presence, volume and count per segment) and
    secondary-capture overlays, from any segmentation model trained on CT (``--model RUN``)."""
    from sobre.image import Segment

    return App(
        "ct-lesions", "0.1.0",
        description="Lesions on CT: SEG + TID 1500 SR (presence, volume, count) + overlay SC; --model RUN",
        accepts=Accept(modality=["CT"], dims=3, min_slices=3,
                       exclude_description="scout|localizer|localiser|topogram|surview"),
        models=[AppModel(None, name="lesions",
                         segments=[Segment("lesion", 1, category=ABNORMAL, type=LESION, color=(255, 48, 48))])],
        config=AppConfig(window="soft-tissue"),
    )
