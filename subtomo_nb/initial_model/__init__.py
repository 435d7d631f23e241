"""3D initial reference (VDAM, ``relion_refine --grad --denovo_3dref``) and symmetry alignment
(``relion_align_symmetry``)."""
