"""Stage 1, data: a dataset in nnU-Net's raw layout in, checked cases out.

Takes `RAW/dataset.json`, `imagesTr/<case>_<CCCC>.<ext>` and `labelsTr/<case>.<ext>` and gives
each case as a float32 `(C, Z, Y, X)` array with its spacing `(z, y, x)` in mm and its affine
(`image_io`: one reader/writer per file ending — `nifti_files`, `itk_files`, `picture_files` — and
DICOM series folders, `dicom_series`), the parsed dataset with every case's files (`dataset`, which also checks each case's
integrity; the case classes of a classification are `case_classes`), and the crop to the nonzero region that the
fingerprint measures and preprocessing applies (`cropping`). The converters write raw datasets:
BreastDM's per-patient `.npy` folders (`breastdm`) and the synthetic DCE-MRI-like demo
(`demo_dataset`)."""
