"""LightningDataModules for PASCAL VOC 2012 (+SBD), Cityscapes and ADE20K, and fixture generators."""

from .ade20k import ADE20KDataModule
from .base import SegmentationDataModule
from .cityscapes import CityscapesDataModule
from .classes import ADE20K_CLASSES, IGNORE_INDEX, VOC_CLASSES, VOC_SHORT_NAMES
from .dataset import DatasetError, SegmentationDataset
from .voc import VOCSegmentationDataModule

__all__ = [
    "ADE20K_CLASSES",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "VOC_SHORT_NAMES",
    "ADE20KDataModule",
    "CityscapesDataModule",
    "DatasetError",
    "SegmentationDataModule",
    "SegmentationDataset",
    "VOCSegmentationDataModule",
]
