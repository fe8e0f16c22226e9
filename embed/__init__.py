"""Stage one: dataset readers, the one preprocessing function, and the MedSigLIP image encoder."""
