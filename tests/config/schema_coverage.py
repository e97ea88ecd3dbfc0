"""Which tests exercise each config field, or how validation refuses it (read by test_schema_coverage.py).

Every field of `spro_mcore/config/schema.py` must appear in exactly one of:
- `EXERCISED`: field -> the tests ("tests/<file>.py::<test function>") that run what the field does (one that
  would fail if the field were ignored, alone or together with the others listed);
- `REFUSED`: field -> a value `config.load_config` refuses with one line naming the field (what is not
  wired); the field's default (the only value that runs) is exercised by every test;
- `PENDING`: field -> why no test exercises it yet (another branch wires it, or it needs a GPU). These are
  strict xfails: adding the field to EXERCISED makes its PENDING entry fail until it is removed.
A new field without an entry fails the test; so does an entry naming a test function that does not exist.
"""

from __future__ import annotations

PLUMB = "tests/trainer/test_config_plumbing.py"
RECIPES = "tests/trainer/test_shipped_recipes.py::test_shipped_recipe_runs_one_step"
UNWIRED = "tests/config/test_unwired.py"
E2E = "tests/trainer/test_e2e.py"
VPP = "tests/trainer/test_policy_vpp_recompute.py"
PACK = "tests/trainer/test_policy_packing.py"
COLLECT = "tests/pav/test_collect.py"
PTRAIN = "tests/pav/test_train.py"
SEARCH = "tests/pav/test_search.py"
MIS = "tests/trainer/test_mismatch_e2e.py"
PAVADV = "tests/algo/test_pav_advantages.py"
BAD = "tests/badinput/test_bad_input.py::test_bad_input"
PAVE2E = "tests/trainer/test_pav_e2e.py"

EXERCISED: dict[str, tuple[str, ...]] = {
    # model
    "model.path": (RECIPES, f"{PLUMB}::test_reference_path_is_the_reference_model"),
    "model.reference_path": (f"{PLUMB}::test_reference_path_is_the_reference_model",),
    "model.reference_mode": (f"{PLUMB}::test_reference_is_frozen_in_both_modes",
                             f"{PLUMB}::test_reference_path_is_the_reference_model"),
    "model.dtype": (RECIPES, "tests/models/test_logprob_kernel.py::test_bf16_weights_close_to_fp32",
                    f"{UNWIRED}::test_unwired_option_is_refused_in_one_line"),
    "model.transformer_impl": ("tests/models/test_build_config.py::test_te_impl_resolution",
                               f"{UNWIRED}::test_unwired_option_is_refused_in_one_line"),
    "model.fp8": ("tests/models/test_build_config.py::test_te_config_level_fp8_fields",
                  "tests/models/test_build_config.py::test_fp8_scope_toggles_config_per_pass"),
    "model.fp8_recipe": ("tests/models/test_build_config.py::test_te_config_level_fp8_fields",),
    "model.fp8_scope": ("tests/models/test_build_config.py::test_fp8_scope_toggles_config_per_pass",),
    "model.logprob_chunk_tokens": ("tests/models/test_logprob_kernel.py::test_chunked_equals_full_logits_values_and_grads",),
    "model.recompute_activations": (f"{VPP}::test_recompute_activations_equals_plain",),
    # parallel
    "parallel.tp": (f"{E2E}::test_tp2_first_step_equals_single_process", RECIPES),
    "parallel.pp": (f"{VPP}::test_pipeline_and_virtual_pipeline_equal_plain",),
    "parallel.dp": ("tests/config/test_load.py::test_world_size_consistency",),
    "parallel.vpp": (f"{VPP}::test_pipeline_and_virtual_pipeline_equal_plain",
                     f"{UNWIRED}::test_unwired_option_is_refused_in_one_line"),
    "parallel.sequence_parallel": (f"{UNWIRED}::test_sequence_parallel_reaches_the_transformer_config",
                                   f"{UNWIRED}::test_the_actor_builds_its_models_with_parallel_sequence_parallel",
                                   f"{UNWIRED}::test_sequence_parallel_pads_the_sequence_to_a_multiple_of_tp",
                                   f"{UNWIRED}::test_unwired_option_is_refused_in_one_line"),
    "parallel.timeout_minutes": (f"{PLUMB}::test_start_sets_log_level_collective_timeout_and_checkpoint_dir",),
    # rollout
    "rollout.engine": (f"{E2E}::test_spro_hf_engine", f"{E2E}::test_spro_vllm_engine", RECIPES),
    "rollout.mode": (RECIPES, "tests/rollout/test_megatron_sync.py::test_tp2_hf_and_vllm_server"),
    "rollout.n": (f"{PLUMB}::test_sampling_and_eval_parameters_reach_the_engine",
                  "tests/algo/test_groups.py::test_alive_counts_against_loop"),
    "rollout.temperature": (f"{PLUMB}::test_sampling_and_eval_parameters_reach_the_engine",
                            "tests/models/test_logprob_kernel.py::test_temperature_and_logprob_only_path"),
    "rollout.top_p": (f"{PLUMB}::test_sampling_and_eval_parameters_reach_the_engine",
                      "tests/rollout/test_sglang_server.py::test_top_p_is_rejected"),
    "rollout.top_k": (f"{PLUMB}::test_sampling_and_eval_parameters_reach_the_engine",
                      "tests/rollout/test_hf_engine.py::test_top_k_logprobs_are_renormalised_over_the_kept_tokens"),
    "rollout.max_new_tokens": (f"{PLUMB}::test_sampling_and_eval_parameters_reach_the_engine",
                               "tests/rollout/test_hf_engine.py::test_stop_token"),
    "rollout.server_urls": (RECIPES, "tests/rollout/test_sglang_server.py::test_groups_go_round_robin_across_calls"),
    "rollout.dtype": (RECIPES, "tests/rollout/test_weight_sync.py::test_cast_changes_floating_point_only_and_detaches"),
    "rollout.kv_cache_memory_bytes": (f"{E2E}::test_spro_vllm_engine",),
    "rollout.weight_sync": ("tests/rollout/test_hf_engine.py::test_a_transport_the_backend_lacks_is_named", RECIPES),
    "rollout.weight_sync_dir": ("tests/rollout/test_weight_sync.py::test_a_default_sync_dir_is_removed_and_a_configured_one_kept",
                                RECIPES),
    "rollout.weight_sync_delta": (
        "tests/rollout/test_vllm_weight_sync_delta.py::test_delta_sends_changed_tensors_and_matches_the_full_state",
        "tests/rollout/test_vllm_weight_sync_delta.py::test_delta_is_refused_where_the_receiver_cannot_check_it",
        "tests/trainer/test_weight_sync_delta_e2e.py::test_vllm_folder_delta_three_steps"),
    "rollout.bucket_bytes": ("tests/rollout/test_weight_sync.py::test_buckets_are_bounded_ordered_and_complete",),
    "rollout.request_timeout_s": ("tests/rollout/test_sglang_server.py::test_unreachable_server_gives_one_clear_error",),
    "rollout.max_retries": ("tests/rollout/test_sglang_server.py::test_server_errors_are_retried",),
    # algo
    "algo.estimator": (f"{E2E}::test_spro_and_grpo_first_updates_identical", RECIPES),
    "algo.beta": ("tests/algo/test_advantages.py::test_spro_hand_computed_mean_baseline",),
    "algo.msa_ratio": ("tests/algo/test_msa_balance.py::test_matches_loop_reference_on_random_batches",
                       "tests/trainer/test_e2e.py::test_spro_balanced_variant_through_the_cli"),
    "algo.baseline": ("tests/algo/test_advantages.py::test_spro_hand_computed_leave_one_out",),
    "algo.std_normalize": ("tests/algo/test_advantages.py::test_spro_with_std_normalised_outcome_and_terms",),
    "algo.eps": ("tests/algo/test_advantages.py::test_grpo_degenerate_groups_are_exactly_zero",),
    "algo.eps_low": ("tests/algo/test_policy_loss.py::test_clip_higher_values_and_gradient",),
    "algo.eps_high": ("tests/algo/test_policy_loss.py::test_clip_higher_values_and_gradient",),
    "algo.dual_clip_c": ("tests/algo/test_policy_loss.py::test_dual_clip_bounds_negative_advantage_tokens",),
    "algo.loss_agg": ("tests/algo/test_aggregation.py::test_aggregate_equals_textbook_formula",),
    "algo.kl_coef": ("tests/algo/test_policy_loss.py::test_kl_penalty_term",),
    "algo.kl_estimator": ("tests/algo/test_kl.py::test_formulas_by_hand",),
    "algo.entropy_coef": ("tests/algo/test_policy_loss.py::test_entropy_bonus_and_its_gradient",),
    "algo.tis": ("tests/algo/test_policy_loss.py::test_truncated_importance_sampling_weights_the_policy_term",),
    "algo.tis_cap": ("tests/algo/test_importance_sampling.py::test_weights_by_hand",),
    # optim
    "optim.lr": (f"{PLUMB}::test_lr_schedule_warmup_and_floor",),
    "optim.min_lr": (f"{PLUMB}::test_lr_schedule_warmup_and_floor",),
    "optim.lr_schedule": (f"{PLUMB}::test_lr_schedule_warmup_and_floor",),
    "optim.warmup_steps": (f"{PLUMB}::test_lr_schedule_warmup_and_floor",),
    "optim.weight_decay": (f"{PLUMB}::test_adam_hyperparameters_and_weight_decay_reach_the_optimizer",),
    "optim.adam_beta1": (f"{PLUMB}::test_adam_hyperparameters_and_weight_decay_reach_the_optimizer",),
    "optim.adam_beta2": (f"{PLUMB}::test_adam_hyperparameters_and_weight_decay_reach_the_optimizer",),
    "optim.adam_eps": (f"{PLUMB}::test_adam_hyperparameters_and_weight_decay_reach_the_optimizer",
                       f"{PLUMB}::test_clip_grad_scales_the_update"),
    "optim.clip_grad": (f"{PLUMB}::test_clip_grad_scales_the_update",),
    "optim.use_distributed_optimizer": (f"{PLUMB}::test_distributed_optimizer_switch",),
    "optim.max_nonfinite_in_row": ("tests/trainer/test_faults.py::test_streak_grows_only_over_fully_skipped_steps",),
    # data
    "data.source": (RECIPES, f"{E2E}::test_spro_hf_engine"),
    "data.train_path": (RECIPES,),
    "data.eval_path": (RECIPES,),
    "data.prompt_key": ("tests/data/test_prompt_dataset.py::test_parquet_with_custom_field_names", RECIPES),
    "data.messages_key": ("tests/data/test_prompt_rows.py::test_jsonl_rows_with_metadata", RECIPES),
    "data.answer_key": ("tests/data/test_prompt_dataset.py::test_parquet_with_custom_field_names", RECIPES),
    "data.chat_template": ("tests/data/test_prompt_dataset.py::test_chat_template_can_be_disabled_or_required",),
    "data.max_prompt_tokens": ("tests/data/test_prompt_dataset.py::test_length_filter_reports_the_dropped_count",),
    "data.prompts_per_step": ("tests/data/test_prompt_iterator.py::test_every_epoch_is_a_fresh_permutation_fixed_by_the_seed",
                              f"{E2E}::test_spro_hf_engine"),
    "data.shuffle": ("tests/data/test_prompt_iterator.py::test_no_shuffle_keeps_file_order",),
    "data.synthetic_train_size": ("tests/data/test_synthetic_arithmetic.py::test_splits_are_deterministic_disjoint_and_distinct",),
    "data.synthetic_eval_size": ("tests/data/test_synthetic_arithmetic.py::test_splits_are_deterministic_disjoint_and_distinct",),
    "data.reward_fn": ("tests/rewards/test_reward_registry.py::test_builtins_by_name",
                       "tests/rewards/test_reward_registry.py::test_user_functions_by_module_and_name", RECIPES),
    "data.reward_timeout_s": ("tests/rewards/test_reward_scoring.py::test_slow_functions_time_out",),
    # trainer
    "trainer.total_steps": (f"{E2E}::test_spro_hf_engine",),
    "trainer.output_dir": ("tests/trainer/test_resume_e2e.py::test_kill9_loop_resumes_to_the_uninterrupted_result",),
    "trainer.seed": ("tests/data/test_prompt_iterator.py::test_every_epoch_is_a_fresh_permutation_fixed_by_the_seed",
                     "tests/trainer/test_resume_e2e.py::test_kill9_loop_resumes_to_the_uninterrupted_result"),
    "trainer.mini_batches": (f"{PLUMB}::test_mini_batches_times_epochs_optimizer_steps",
                             "tests/algo/test_aggregation.py::test_micro_batches_and_ranks_sum_to_the_big_batch"),
    "trainer.ppo_epochs": (f"{PLUMB}::test_mini_batches_times_epochs_optimizer_steps",),
    "trainer.micro_batch_tokens": (f"{VPP}::test_pipeline_and_virtual_pipeline_equal_plain",
                                   "tests/trainer/test_micro_batches.py::test_hand_case"),
    "trainer.eval_interval": (f"{E2E}::test_spro_hf_engine",),
    "trainer.eval_n": (f"{PLUMB}::test_sampling_and_eval_parameters_reach_the_engine",),
    "trainer.async_mode": ("tests/trainer/test_async_e2e.py::test_one_step_off_at_staleness_0_equals_off_bit_for_bit",
                           "tests/trainer/test_async_e2e.py::test_one_step_off_trains_on_the_previous_policy_version",
                           "tests/trainer/test_async_vllm_server_e2e.py::test_one_step_off_with_two_vllm_servers",
                           "tests/trainer/test_async_bounded_e2e.py::test_bounded_at_max_staleness_0_equals_off_bit_for_bit",
                           f"{UNWIRED}::test_unwired_option_is_refused_in_one_line"),
    "trainer.max_staleness": ("tests/trainer/test_async_bounded_e2e.py::test_bounded_at_max_staleness_0_equals_off_bit_for_bit",
                              "tests/trainer/test_async_bounded_e2e.py::test_bounded_rows_are_at_most_max_staleness_old",
                              "tests/trainer/test_rollout_producer.py::test_bounded_feed_is_throttled_by_max_staleness",
                              "tests/trainer/test_async_vllm_server_e2e.py::test_bounded_with_two_vllm_servers",
                              f"{UNWIRED}::test_unwired_option_is_refused_in_one_line"),
    "trainer.eval_temperature": (f"{PLUMB}::test_sampling_and_eval_parameters_reach_the_engine",),
    # checkpoint
    "checkpoint.interval": ("tests/trainer/test_checkpoint_dist.py::test_uninterrupted_run_saves_complete_checkpoints",),
    "checkpoint.resume": ("tests/trainer/test_checkpoint_dist.py::test_resume_same_layout_is_bit_exact",
                          "tests/trainer/test_checkpoint_dist.py::test_resume_into_pp2_and_bad_explicit_path_error"),
    "checkpoint.keep_last": ("tests/trainer/test_checkpoint_files.py::test_prune_keeps_newest_and_protected",),
    "checkpoint.async_save": ("tests/trainer/test_checkpoint_dist.py::test_uninterrupted_run_saves_complete_checkpoints",
                              RECIPES),
    "checkpoint.export_hf": (f"{E2E}::test_spro_and_grpo_first_updates_identical",),
    "checkpoint.dir": (f"{PLUMB}::test_start_sets_log_level_collective_timeout_and_checkpoint_dir",),
    # logging
    "logging.tensorboard": (f"{PLUMB}::test_tensorboard_and_progress_bar_switches",),
    "logging.wandb_project": (f"{PLUMB}::test_wandb_project_without_wandb_is_one_clear_error",),
    "logging.progress_bar": (f"{PLUMB}::test_tensorboard_and_progress_bar_switches",),
    "logging.level": (f"{PLUMB}::test_start_sets_log_level_collective_timeout_and_checkpoint_dir",),
    # added with the Policy seam, colocated vLLM, packing, the mismatch corrections and PAV (this merge)
    "rollout.sleep_when_idle": ("tests/trainer/test_e2e.py::test_hf_engine_sleeps_during_the_update",
                                "tests/rollout/test_hf_engine.py::test_sleep_frees_the_weights_and_the_sync_after_wake_restores_them"),
    "rollout.engine_tp": ("tests/rollout/test_vllm_colocated_torchrun.py::test_two_ranks_colocated_vllm_matches_megatron_tp2_after_each_sync",
                          "tests/config/test_vllm_colocated_layout.py::test_engine_spanning_replicas_is_refused_with_one_line"),
    "algo.mis": (f"{MIS}::test_sequence_mis_reports_what_it_keeps",
                 "tests/algo/test_policy_loss.py::test_masked_importance_sampling_weights_the_policy_term"),
    "algo.mis_low": ("tests/algo/test_importance_sampling.py::test_mis_equals_loop_reference",
                     f"{MIS}::test_sequence_mis_reports_what_it_keeps"),
    "algo.mis_high": ("tests/algo/test_importance_sampling.py::test_mis_equals_loop_reference",
                      f"{MIS}::test_sequence_mis_reports_what_it_keeps"),
    "algo.old_logprobs": (f"{MIS}::test_engine_logprobs_as_old_policy",),
    "data.synthetic_task": ("tests/data/test_synthetic_chain.py::test_config_selects_the_task_and_keeps_the_quickstart_files",
                            "tests/study/test_study_cli.py::test_tiny_grid_end_to_end"),
    "rollout.gpu_memory_utilization": ("tests/rollout/test_vllm_memory.py::test_the_config_value_reaches_the_engine_arguments",),
    "trainer.packing": (f"{PACK}::test_packed_update_equals_padded", "tests/models/test_packing.py::test_packed_equals_padded"),
    "pav.data_dir": (f"{COLLECT}::test_rows_bookkeeping_and_fields", f"{PTRAIN}::test_loss_decreases_and_lr_follows_warmup_cosine"),
    "pav.n_mc": (f"{COLLECT}::test_q_hat_lies_in_the_binomial_interval_of_the_exact_q", f"{COLLECT}::test_rows_bookkeeping_and_fields"),
    "pav.num_prompts": (f"{COLLECT}::test_rows_bookkeeping_and_fields",),
    "pav.samples_per_prompt": (f"{COLLECT}::test_rows_bookkeeping_and_fields",),
    "pav.prompts_per_batch": (f"{COLLECT}::test_rows_bookkeeping_and_fields", f"{COLLECT}::test_resume_after_kill_keeps_written_rows"),
    "pav.prover": (f"{PTRAIN}::test_score_gives_the_verifiers_per_step_predictions", f"{COLLECT}::test_bad_input_one_line_and_nothing_lost"),
    "pav.prover_k": (f"{PTRAIN}::test_score_gives_the_verifiers_per_step_predictions",),
    "pav.verifier_dir": (f"{PTRAIN}::test_export_reloads_to_the_same_predictions_and_matches_hf",),
    "pav.train_steps": (f"{PTRAIN}::test_loss_decreases_and_lr_follows_warmup_cosine",),
    "pav.batch_size": (f"{PTRAIN}::test_parallel_training_equals_one_process",),
    "pav.heldout_fraction": (f"{PTRAIN}::test_bad_input", f"{PTRAIN}::test_loss_decreases_and_lr_follows_warmup_cosine"),
    "pav.eval_interval": (f"{PTRAIN}::test_loss_decreases_and_lr_follows_warmup_cosine",),
    "pav.score_input": (f"{PTRAIN}::test_score_gives_the_verifiers_per_step_predictions",),
    "pav.splitter": (f"{COLLECT}::test_rows_bookkeeping_and_fields", f"{COLLECT}::test_bad_input_one_line_and_nothing_lost"),
    "algo.pav_source": (f"{PAVE2E}::test_pav_verifier_source_three_steps", f"{PAVE2E}::test_pav_mc_source_three_steps", BAD),
    "algo.pav_path": (f"{PAVE2E}::test_pav_verifier_source_three_steps", BAD),
    "algo.pav_prover_k": (f"{PAVADV}::test_matches_loop_reference_on_random_batches", BAD),
    "algo.pav_n_mc": (f"{PAVE2E}::test_pav_mc_source_three_steps", BAD),
    "algo.pav_alpha": (f"{PAVADV}::test_alpha_zero_is_grpo_exactly", f"{PAVADV}::test_matches_loop_reference_on_random_batches"),
    "algo.pav_splitter": (BAD,),
    "algo.pav_prover": ("tests/trainer/test_process_reward.py::test_the_mc_prover_is_the_frozen_initial_policy_or_the_rollout_engine",
                        f"{PAVE2E}::test_initial_prover_stays_frozen_while_the_current_one_moves", BAD),
    "search.beam_width": (f"{SEARCH}::test_one_beam_one_candidate_is_plain_sampling", f"{SEARCH}::test_search_command_writes_the_comparison"),
    "search.candidates": (f"{SEARCH}::test_one_beam_one_candidate_is_plain_sampling", f"{SEARCH}::test_ranking_follows_the_verifier"),
    "search.alpha": (f"{SEARCH}::test_ranking_follows_the_verifier",),
    "search.num_prompts": (f"{SEARCH}::test_search_command_writes_the_comparison",),
    "search.output_dir": (f"{SEARCH}::test_search_command_writes_the_comparison",),
}

# field -> a value validation refuses (with one line naming the field); only the default runs
REFUSED: dict[str, str] = {
    "parallel.cp": "2",  # no sequence is split: context parallelism is not implemented
    "parallel.ep": "2",  # expert parallelism: no mixture-of-experts model is supported
}

PENDING: dict[str, str] = {
}
