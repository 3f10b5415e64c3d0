"""File names of a RAM++ model folder (light: the CLI reads them without importing torch)."""

CONVERTED = "model.safetensors"  # model-only safetensors, written by `models convert-rampp`
OFFICIAL = "ram_plus_swin_large_14m.pth"  # the official checkpoint, served as it is if not converted
OFFICIAL_NAME = "ram_plus_swin_large_14m"
TAG_LIST_FILE = "ram_tag_list.txt"
THRESHOLD_FILE = "ram_tag_list_threshold.txt"
