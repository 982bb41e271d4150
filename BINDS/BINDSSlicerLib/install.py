"""Python dependencies of BINDS inside Slicer: checked without importing them, installed only
after the user confirms.

* torch comes from the PyTorch extension (a dependency of BINDS in the extension's
  ``depends``): ``PyTorchUtils.PyTorchUtilsLogic().installTorch`` picks the build that matches
  the computer's GPU.
* the other packages of ``pyproject.toml`` that Slicer does not bundle (monai, matplotlib)
  are installed with ``pip_ensure`` (Slicer 5.11+: ``slicer.pydeps``; the same function is
  looked for in ``slicer.packaging``), else with ``slicer.util.pip_install``.
* pydicom is special: BINDS needs pydicom 3, while Slicer (5.10) bundles pydicom 2.4 for its
  DICOM module and upgrading it there is not safe (Slicer/Slicer#8796; QuantitativeReporting
  was pulled back from the Extensions Index for requiring pydicom 3). When Slicer's own pydicom
  is too old, BINDS installs pydicom into a private folder (:func:`privateSitePackages`,
  ``pip install --target ... --no-deps``) that only the BINDS pipeline process puts on its
  ``PYTHONPATH``; Slicer's DICOM module keeps its version. The Slicer process itself never
  imports pydicom through BINDS: "Load study..." reads DICOM in a ``binds convert`` process.

Nothing is imported or installed when Slicer loads the module (the Extensions Index review
checks this): :func:`ensureDependencies` runs when the user clicks Apply.
"""

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys

#: What BINDSLib needs beyond Slicer's own Python (kept in step with pyproject.toml).
REQUIREMENTS = ("monai>=1.3", "pydicom>=3.0", "matplotlib>=3.7", "SimpleITK>=2.3", "numpy>=1.24")
TORCH_REQUIREMENT = ">=2.2"
#: What reading a study needs ("Load study...": ``binds convert``): no torch, no monai.
LOAD_REQUIREMENTS = ("pydicom>=3.0", "SimpleITK>=2.3", "numpy>=1.24")
#: Requirements that may go into the private folder instead of Slicer's site-packages.
PRIVATE_PACKAGES = ("pydicom",)

_REQUIREMENT_RE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:(>=|==)\s*([0-9][0-9A-Za-z.\-+]*))?\s*$")


def parseRequirement(requirement):
    """``"monai>=1.3"`` -> ``("monai", ">=", "1.3")`` (only ``>=`` and ``==`` are used here)."""
    match = _REQUIREMENT_RE.match(requirement)
    if not match:
        raise ValueError(f"unsupported requirement {requirement!r}")
    return match[1], match[2], match[3]


def _versionKey(version):
    try:
        from packaging.version import Version

        return Version(version)
    except Exception:  # noqa: BLE001 - packaging missing or a non-PEP 440 version
        return tuple(int(p) for p in re.findall(r"\d+", version)[:4])


def installedVersion(distribution):
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def isSatisfied(requirement, versionOf=installedVersion):
    name, operator, wanted = parseRequirement(requirement)
    have = versionOf(name)
    if have is None:
        return False
    if operator is None:
        return True
    if operator == "==":
        return _versionKey(have) == _versionKey(wanted)
    return _versionKey(have) >= _versionKey(wanted)


def missingRequirements(requirements=REQUIREMENTS, versionOf=installedVersion, privateFolder=None):
    """The requirements that are not installed, or installed in a too old version. Those of
    :data:`PRIVATE_PACKAGES` also count as installed when ``privateFolder`` has them."""
    def satisfied(r):
        if isSatisfied(r, versionOf):
            return True
        private = privateFolder and parseRequirement(r)[0] in PRIVATE_PACKAGES
        return bool(private) and isSatisfied(r, lambda name: privateVersion(name, privateFolder))

    return [r for r in requirements if not satisfied(r)]


def privateSitePackages(baseFolder=None):
    """BINDS' private package folder for this Python version, next to Slicer's user settings
    (``<settings folder>/BINDS/python3.12-packages``)."""
    if baseFolder is None:
        import slicer

        baseFolder = os.path.dirname(slicer.app.slicerUserSettingsFilePath)
    return os.path.join(baseFolder, "BINDS", f"python{sys.version_info[0]}.{sys.version_info[1]}-packages")


def privatePathsIfAny():
    """``[privateSitePackages()]`` when that folder exists (for the process's PYTHONPATH), else
    ``[]`` (also outside a Slicer application, e.g. in tests)."""
    try:
        folder = privateSitePackages()
    except (ImportError, AttributeError):
        return []
    return [folder] if os.path.isdir(folder) else []


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def privateVersion(distribution, folder):
    """The version of ``distribution`` installed in ``folder`` (``pip install --target``), or None."""
    if not folder or not os.path.isdir(folder):
        return None
    for dist in importlib.metadata.distributions(path=[folder]):
        if _canonical(dist.metadata["Name"] or "") == _canonical(distribution):
            return dist.version
    return None


def torchInstalled():
    return importlib.util.find_spec("torch") is not None


def tooOldTorch(versionOf=installedVersion):
    """The installed torch's version when it is older than :data:`TORCH_REQUIREMENT`, else None
    (also when torch is missing or its version is unknown)."""
    have = versionOf("torch")
    if have is None or isSatisfied("torch" + TORCH_REQUIREMENT, lambda name: have):
        return None
    return have


def describeMissing(missing, needTorch, private=()):
    lines = []
    if needTorch:
        lines.append(f"PyTorch {TORCH_REQUIREMENT} (installed by the PyTorch extension for this computer's GPU or CPU)")
    lines += [r for r in missing if r not in private]
    lines += [f"{r} (into a folder only BINDS uses; Slicer's own copy is left as it is)" for r in private]
    return ("BINDS needs these Python packages, which are not installed yet:\n\n  "
            + "\n  ".join(lines)
            + "\n\nThey are downloaded from the Python Package Index (several hundred MB for PyTorch) "
              "and installed into Slicer's Python. This may take several minutes, and upgrading a "
              "package Slicer already uses may require a restart.\n\nInstall them now?")


def _pipEnsureFunction():
    """``pip_ensure`` of this Slicer (5.11+: slicer.pydeps; also looked for in slicer.packaging)."""
    for moduleName in ("slicer.packaging", "slicer.pydeps"):
        try:
            module = importlib.import_module(moduleName)
        except ImportError:
            continue
        function = getattr(module, "pip_ensure", None)
        if function is not None:
            return function
    return None


def ensureDependencies(requester="BINDS", confirm=None, privateFolder=None, requirements=REQUIREMENTS,
                       withTorch=True):
    """Make sure torch (unless ``withTorch`` is False) and ``requirements`` are importable; ask
    before installing. "Load study..." asks for :data:`LOAD_REQUIREMENTS` only.

    ``confirm(message) -> bool`` asks the user (default: ``slicer.util.confirmOkCancelDisplay``).
    Returns True when everything is installed, False when the user declined. Raises
    RuntimeError when an installation failed.
    """
    import slicer

    if withTorch and torchInstalled() and (old := tooOldTorch()):
        # another extension's torch: BINDS would fail in its process with an obscure error
        raise RuntimeError(f"PyTorch {old} is installed; BINDS needs PyTorch {TORCH_REQUIREMENT}. Update it "
                           "in the PyTorch Utils module (this may need a restart) and try again.")
    folder = privateFolder if privateFolder is not None else privateSitePackages()
    missing = missingRequirements(requirements, privateFolder=folder)
    private = [r for r in missing if parseRequirement(r)[0] in PRIVATE_PACKAGES]
    missing = [r for r in missing if r not in private]
    needTorch = withTorch and not torchInstalled()
    if not missing and not private and not needTorch:
        return True
    confirm = confirm or (lambda message: slicer.util.confirmOkCancelDisplay(
        message, windowTitle=f"{requester}: install Python packages"))
    if not confirm(describeMissing(missing + private, needTorch, private)):
        return False
    if needTorch:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError("BINDS needs the PyTorch extension: install it from the Extensions Manager "
                               "and restart Slicer.") from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch could not be installed; use the PyTorch Utils module to install it.")
    if missing:
        logging.info("BINDS: installing %s", ", ".join(missing))
        pipEnsure = _pipEnsureFunction()
        if pipEnsure is not None:
            from packaging.requirements import Requirement

            wanted = [Requirement(r) for r in missing]  # (``requirements`` stays strings: checked below)
            options = {"prompt_install": False, "requester": requester}
            try:  # an older pip_ensure may lack these keywords (a TypeError raised inside it is not that)
                import inspect

                parameters = inspect.signature(pipEnsure).parameters
                options = {k: v for k, v in options.items() if k in parameters}
            except (TypeError, ValueError):  # no signature to read: pass the requirements only
                options = {}
            pipEnsure(wanted, **options)
        else:
            slicer.util.pip_install(missing)
    if private:
        logging.info("BINDS: installing %s into %s", ", ".join(private), folder)
        os.makedirs(folder, exist_ok=True)
        slicer.util.pip_install(["--target", folder, "--no-deps", "--upgrade", *private])
    if missing or private:
        importlib.invalidate_caches()
        still = missingRequirements(requirements, privateFolder=folder)
        if still:
            raise RuntimeError(f"installing {', '.join(still)} failed; see the Python console for pip's output")
    return True


def gpuName():
    """Name of the first CUDA GPU, or None (needs torch; never installs it)."""
    if not torchInstalled():
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA setup is reported as "no GPU"
        logging.debug("BINDS: torch.cuda failed", exc_info=True)
    return None
