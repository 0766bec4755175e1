"""Map the top-level folders into one ``rtgrid`` package (``rtgrid.master``, ``rtgrid.engines`` ...)."""

from setuptools import find_packages, setup

ROOTS = ("protos", "master", "agent", "engines", "client")

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in ROOTS:
    package_dir[f"rtgrid.{root}"] = root
    packages.append(f"rtgrid.{root}")
    packages += [f"rtgrid.{root}.{sub}" for sub in find_packages(root)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "": ["*.json", "*.yaml", "*.proto", "*.pyi", "**/*.yaml", "**/*.json"],
        # Built-in model packages (weights, card, hash) and the configurations that trained them.
        "rtgrid.engines.segmentation.deep.builtin": ["*/weights.pt", "*/card.json", "*/sha256", "train/*.json"],
        "rtgrid.engines.dose_prediction": ["builtin/*/weights.pt", "builtin/*/card.json", "builtin/*/sha256"],
    },
)
