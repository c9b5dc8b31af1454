"""Device catalogue: what a real Android device of a given model can report.

Three data files under ``config/devices/`` (see the comments at the top of each):

* ``models.yaml``: facts per ``Build.MODEL`` (codenames, SoC and ``Build.HARDWARE``,
  densities, panel resolutions, Android API range, ABIs, a popularity estimate);
* ``emulators.yaml``: emulator / virtual-device markers with the field they match;
* ``play_devices.csv.gz``: Google Play's supported-devices list (brand, marketing name,
  ``Build.DEVICE``, ``Build.MODEL``), built by ``scripts/build_device_list.py``.

``DeviceCatalogue.load(dir)`` validates all of it and builds every index up front, so the
per-request methods are dictionary look-ups (plus one pre-compiled regular expression per
field for emulator markers). Pure: standard library and PyYAML, no network, no clock.

A missing fact means "unknown" and never produces a complaint: the catalogue is an
allowlist of the possible, and it only speaks where it knows.

facts.py holds what is known (ModelFacts, EmulatorMarker, SoC vendors), files.py reads and
checks the three files, catalogue.py is DeviceCatalogue (loading, look-ups, emulator
markers, plausibility).
"""

from detector.devices.catalogue import PLAUSIBILITY_CODES, DeviceCatalogue
from detector.devices.facts import CatalogueError, EmulatorMarker, ModelFacts
from detector.devices.files import EMULATORS_FILE, MODELS_FILE, PLAY_FILE

__all__ = [
    "PLAUSIBILITY_CODES",
    "CatalogueError",
    "DeviceCatalogue",
    "EmulatorMarker",
    "ModelFacts",
    "EMULATORS_FILE",
    "MODELS_FILE",
    "PLAY_FILE",
]
