"""Package layout for setuptools.

The product's folders (sdk/, runtime/, registry/, control/) are mapped under the
single import namespace ``meshext`` so that no generic top-level module name
(``sdk``, ``control``, ...) lands in a user's environment.  Everything else is
declared in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "meshext": "meshext",
    "meshext.sdk": "sdk",
    "meshext.runtime": "runtime",
    "meshext.registry": "registry",
    "meshext.control": "control",
}

packages = []
for package, folder in FOLDERS.items():
    packages.append(package)
    packages.extend(f"{package}.{sub}" for sub in find_packages(folder))

setup(packages=packages, package_dir=FOLDERS)
