"""Which model-card section answers which item of CLAIM 2024, TRIPOD+AI, EU AI Act art. 13 and FDA's 2025 draft.

The card's sections are those of Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019), plus
inputs, outputs, human oversight and runtime. Each row of :data:`CROSSWALK` says where an item of a
reporting guideline or regulation is answered, and how sure the citation is:

- ``checked``: item number and title compared with a copy of the published checklist;
- ``from memory``: number and title as we recall them from the published text; check before relying on
  them in a submission;
- ``topic only``: no item number is given because we could not verify the numbering (CLAIM 2024
  renumbered its 44 items relative to CLAIM 2020; the FDA draft is organised by sections and
  appendices whose numbering we did not verify).

A card answers an item with what Sobre knows; where it knows nothing, the field says "not stated".
"""

from __future__ import annotations

__all__ = ["CARD_SECTIONS", "CROSSWALK", "FRAMEWORKS"]

#: (key, title) of every card section, in order: Mitchell et al. 2019's nine, then four more.
CARD_SECTIONS = (
    ("model_details", "Model details"),
    ("intended_use", "Intended use"),
    ("factors", "Factors"),
    ("metrics", "Metrics"),
    ("evaluation_data", "Evaluation data"),
    ("training_data", "Training data"),
    ("quantitative_analyses", "Quantitative analyses"),
    ("ethical_considerations", "Ethical considerations"),
    ("caveats_and_recommendations", "Caveats and recommendations"),
    ("inputs", "Inputs"),
    ("outputs", "Outputs"),
    ("human_oversight", "Human oversight"),
    ("runtime", "Runtime needs"),
)

FRAMEWORKS = {
    "CLAIM 2024": "Tejani et al., Checklist for Artificial Intelligence in Medical Imaging (CLAIM): 2024 Update, "
                  "Radiology: Artificial Intelligence 2024",
    "TRIPOD+AI": "Collins et al., TRIPOD+AI statement, BMJ 2024;385:e078378",
    "EU AI Act art. 13": "Regulation (EU) 2024/1689, article 13 (transparency and provision of information to "
                         "deployers), paragraph 3",
    "FDA 2025 draft": "FDA draft guidance, Artificial Intelligence-Enabled Device Software Functions: Lifecycle "
                      "Management and Marketing Submission Recommendations (January 2025)",
}

_C, _M, _T = "checked", "from memory", "topic only"


def _rows(framework: str, items: list[tuple[str, str, tuple[str, ...], str]]) -> list[dict]:
    return [{"framework": framework, "item": item, "title": title, "sections": list(sections), "citation": conf}
            for item, title, sections, conf in items]


CROSSWALK: list[dict] = (
    _rows("CLAIM 2024", [
        ("", "Intended use and clinical role of the AI approach", ("intended_use",), _T),
        ("", "Data sources", ("training_data", "evaluation_data"), _T),
        ("", "Eligibility criteria (inclusion and exclusion)", ("training_data",), _T),
        ("", "Data pre-processing steps", ("inputs",), _T),
        ("", "De-identification methods", ("ethical_considerations",), _T),
        ("", "Handling of missing data", ("training_data",), _T),
        ("", "Reference standard: definition, source, annotators' qualifications", ("training_data",), _T),
        ("", "Data partitions: assignment, proportions, level of disjointness", ("evaluation_data",), _T),
        ("", "Model description: inputs, outputs, architecture", ("model_details", "inputs", "outputs"), _T),
        ("", "Software libraries, frameworks and packages", ("model_details",), _T),
        ("", "Initialisation of model parameters", ("model_details",), _T),
        ("", "Training details and selection of the final model", ("model_details",), _T),
        ("", "Ensembling", ("model_details",), _T),
        ("", "Performance metrics and their uncertainty", ("metrics", "quantitative_analyses"), _T),
        ("", "Robustness or sensitivity analysis", ("quantitative_analyses",), _T),
        ("", "Validation or testing on external data", ("evaluation_data",), _T),
        ("", "Demographic and clinical characteristics of each partition", ("training_data", "evaluation_data"),
         _T),
        ("", "Failure analysis", ("caveats_and_recommendations",), _T),
        ("", "Limitations", ("caveats_and_recommendations",), _T),
    ])
    + _rows("TRIPOD+AI", [
        ("3b", "Target population: intended population, place in the care pathway, intended users",
         ("intended_use",), _C),
        ("3c", "Health inequalities across groups", ("factors", "ethical_considerations"), _C),
        ("5a", "Sources of data", ("training_data", "evaluation_data"), _C),
        ("5b", "Dates of data collection", ("training_data",), _C),
        ("6a", "Setting: number and location of centres", ("training_data", "evaluation_data"), _C),
        ("6b", "Eligibility criteria", ("training_data",), _C),
        ("7", "Data preparation", ("inputs",), _M),
        ("8", "Outcome and how it was assessed", ("outputs", "training_data"), _M),
        ("9", "Predictors (inputs)", ("inputs",), _M),
        ("10", "Sample size", ("training_data", "evaluation_data"), _M),
        ("11", "Missing data", ("training_data",), _M),
        ("12", "Analytical methods", ("model_details", "metrics"), _M),
        ("13", "Class imbalance", ("training_data",), _M),
        ("14", "Fairness", ("factors", "quantitative_analyses"), _M),
        ("15", "Model output", ("outputs",), _M),
        ("16", "Training versus evaluation (differences in data)", ("evaluation_data",), _M),
        ("20", "Participants: characteristics of each data set", ("training_data", "evaluation_data"), _M),
        ("22", "Model specification", ("model_details", "outputs"), _M),
        ("23", "Model performance (with uncertainty, in key subgroups)", ("quantitative_analyses",), _M),
        ("26", "Limitations", ("caveats_and_recommendations",), _M),
        ("27", "Usability of the model in the context of current care", ("intended_use", "human_oversight",
                                                                           "runtime"), _M),
    ])
    + _rows("EU AI Act art. 13", [
        ("13(3)(a)", "Identity and contact details of the provider", ("model_details",), _M),
        ("13(3)(b)(i)", "Intended purpose", ("intended_use",), _M),
        ("13(3)(b)(ii)", "Level of accuracy, its metrics, robustness and cybersecurity tested and validated",
         ("metrics", "quantitative_analyses", "model_details"), _M),
        ("13(3)(b)(iii)", "Known or foreseeable circumstances that may lead to risks",
         ("caveats_and_recommendations", "intended_use"), _M),
        ("13(3)(b)(iv)", "Technical capabilities to provide information relevant to explain the output",
         ("outputs",), _M),
        ("13(3)(b)(v)", "Performance regarding specific persons or groups", ("quantitative_analyses", "factors"),
         _M),
        ("13(3)(b)(vi)", "Specifications for the input data; training, validation and testing data",
         ("inputs", "training_data", "evaluation_data"), _M),
        ("13(3)(b)(vii)", "Information to interpret the output and use it appropriately", ("outputs", "metrics"),
         _M),
        ("13(3)(c)", "Changes to the system and its performance pre-determined by the provider",
         ("model_details",), _M),
        ("13(3)(d)", "Human oversight measures (art. 14)", ("human_oversight",), _M),
        ("13(3)(e)", "Computational and hardware resources, expected lifetime, maintenance", ("runtime",), _M),
        ("13(3)(f)", "Mechanisms to collect, store and interpret logs (art. 12)", (), _M),
    ])
    + _rows("FDA 2025 draft", [
        ("", "Device description: inputs, outputs, intended users and use environment",
         ("intended_use", "inputs", "outputs"), _T),
        ("", "Model description: architecture, features, training", ("model_details",), _T),
        ("", "Data management: collection, reference standard, representativeness, independence of test data",
         ("training_data", "evaluation_data"), _T),
        ("", "Validation: performance with confidence intervals, subgroup analyses",
         ("metrics", "quantitative_analyses"), _T),
        ("", "Labeling: limitations, performance, data characteristics",
         ("caveats_and_recommendations", "quantitative_analyses", "training_data"), _T),
        ("", "Human-AI workflow and user interface", ("human_oversight",), _T),
        ("", "Device performance monitoring", ("caveats_and_recommendations",), _T),
        ("", "Cybersecurity", ("model_details",), _T),
        ("", "Model card (the draft's example appendix)", tuple(k for k, _ in CARD_SECTIONS), _T),
    ])
)
