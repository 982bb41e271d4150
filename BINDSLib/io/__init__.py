"""Readers: every way data enters BINDS ends as :class:`BINDSLib.study.Study` objects.

:func:`BINDSLib.io.loader.load` is the single entry point (DICOM folders, study folders,
exam-history folders, dataset layouts, plain files).
"""
