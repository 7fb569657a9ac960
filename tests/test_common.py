"""scikit-learn's own estimator checks, for every estimator of the package.

sktransfer's estimators take *images*; most of scikit-learn's checks feed 2-D
``(n_samples, n_features)`` tables, which are rejected with a clear error
(tested in test_images.py). Those checks are listed below with that reason and
run as strict xfails: one that starts passing fails the suite so the list stays
true. This is the one list of expected failures (CNNFeatureExtractor,
FineTuneClassifier, ImageNetClassifier). The image-specific equivalents
(pickling, clone, pipelines, batch and order invariance, dtypes, sample and
class weights) are tested on images in test_extractor.py, test_finetune.py,
test_finetune_recipe.py and test_imagenet.py.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from sktransfer import CNNFeatureExtractor, FineTuneClassifier, ImageNetClassifier

TABULAR = (
    "feeds a 2-D (n_samples, n_features) table; images (n, H, W[, C]), paths or PIL "
    "images are required and a table is rejected with InvalidImageError"
)
_TABULAR_CHECKS = [
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_estimators_dtypes",
    "check_estimators_empty_data_messages",
    "check_estimators_fit_returns_self",
    "check_estimators_nan_inf",
    "check_estimators_overwrite_params",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_fit2d_1feature",
    "check_fit2d_1sample",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
    "check_fit_score_takes_y",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_pipeline_consistency",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
    "check_transformer_data_not_an_array",
    "check_transformer_general",
    "check_transformer_preserve_dtypes",
]
# Both classifiers.
_TABULAR_CLASSIFIER_CHECKS = [
    "check_classifier_data_not_an_array",
    "check_classifiers_classes",
    "check_classifiers_one_label",
    "check_classifiers_train",
    "check_requires_y_none",
    "check_supervised_y_2d",
]
# FineTuneClassifier only: ImageNetClassifier has no partial_fit and its fit takes
# no sample weights, so these checks pass for it.
_TABULAR_FINETUNE_CHECKS = [
    "check_all_zero_sample_weights_error",
    "check_class_weight_classifiers",
    "check_classifiers_one_label_sample_weights",
    "check_estimators_partial_fit_n_features",
    "check_sample_weight_equivalence_on_dense_data",
    "check_sample_weights_list",
    "check_sample_weights_not_an_array",
    "check_sample_weights_not_overwritten",
    "check_sample_weights_pandas_series",
    "check_sample_weights_shape",
]
# Inherited from skorch.NeuralNet, which FineTuneClassifier subclasses on purpose
# (to keep every skorch parameter and callback working): skorch documents these
# deviations from scikit-learn's rules.
_SKORCH = {
    "check_no_attributes_set_in_init": (
        "skorch's NeuralNet.__init__ sets history_, initialized_ and virtual_params_"
    ),
    "check_set_params": (
        "skorch's NeuralNet.set_params processes values at once and fails inside "
        "skorch on the check's odd values (e.g. a float where it expects a set)"
    ),
}


def expected_failed_checks(estimator) -> dict[str, str]:
    """The one list of expected failures, for every estimator of the package."""
    failed = dict.fromkeys(_TABULAR_CHECKS, TABULAR)
    failed["check_dtype_object"] = (
        "object arrays are accepted only as 1-D arrays of file paths (or one column "
        "of them), not as 2-D tables"
    )
    if isinstance(estimator, (FineTuneClassifier, ImageNetClassifier)):
        failed.update(dict.fromkeys(_TABULAR_CLASSIFIER_CHECKS, TABULAR))
    if isinstance(estimator, FineTuneClassifier):
        failed.update(dict.fromkeys(_TABULAR_FINETUNE_CHECKS, TABULAR))
        failed["check_classifiers_regression_target"] = TABULAR
        failed.update(_SKORCH)
    if isinstance(estimator, ImageNetClassifier):
        failed["check_classifiers_regression_target"] = (
            "a 2-D table is rejected before y is checked (continuous y is rejected: "
            "test_imagenet.py::test_continuous_labels_are_rejected)"
        )
    return failed


# device="cpu": the checks compare results exactly across fits and batch layouts.
@parametrize_with_checks(
    [
        CNNFeatureExtractor(
            "mobilenet_v3_small", weights=None, batch_size=64, device="cpu"
        ),
        FineTuneClassifier(
            "mobilenet_v3_small",
            weights=None,
            max_epochs=1,
            image_size=32,
            random_state=0,
            device="cpu",
        ),
        ImageNetClassifier(
            "mobilenet_v3_small", weights=None, batch_size=64, device="cpu"
        ),
    ],
    expected_failed_checks=expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
