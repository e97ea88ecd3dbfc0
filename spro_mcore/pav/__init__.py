"""PAV (process advantage verifiers, shared/spec/PAV.md): Monte-Carlo progress collection, the verifier and
verifier-guided search. The math (step splitting, BoK, progress) lives in spro_mcore/algo."""
