"""Package discovery for setuptools (the metadata is in pyproject.toml).

Why a setup.py: backends/ and calibration/ live at the top of the repository (the design
card fixes the layout) but install as hadmc_deploy.backends and hadmc_deploy.calibration.
pyproject's static `packages.find` cannot map discovered folders under another name, and a
hand-kept list once left search/rl/ out of the wheel. Here every package under the three
folders is found automatically and mapped, so none can be forgotten.
"""

from setuptools import find_packages, setup

MAPPED = {"backends": "hadmc_deploy.backends", "calibration": "hadmc_deploy.calibration"}

packages = find_packages(include=["hadmc_deploy", "hadmc_deploy.*"])
package_dir = {}
for folder, name in MAPPED.items():
    for sub in find_packages(include=[folder, f"{folder}.*"]):
        installed = name + sub[len(folder):]
        packages.append(installed)
        package_dir[installed] = sub.replace(".", "/")

setup(packages=packages, package_dir=package_dir)
