# The write-up's studies, offline (scikit-image pairs); included from the Makefile, which defines
# BIN. Each target runs one multirun into multirun/<preset>/<date>_<time>/ and then writes its
# report to reports/<preset>-<date>_<time>.html, even when some jobs failed (the report shows
# them; make then exits non-zero). STUDY_ARGS adds overrides, e.g. a quick look on a CPU:
#   make study-layers STUDY_ARGS="model.weights=random steps=20 image_size=128"
# The studies and what to look at: experiments/README.md.
STUDY_ARGS ?=
STUDY_STAMP := $(shell date +%Y-%m-%d_%H-%M-%S)

# $(call study,<preset>[,<report options>]): the multirun, then the report (the layer and
# style-weight studies colour their trade-off plot and loss curves by the studied key and label
# them by pair); the multirun's exit status is kept.
define study
$(BIN)/python -m stylelab.run -m experiment=$(1) hydra.sweep.dir=multirun/$(1)/$(STUDY_STAMP) $(STUDY_ARGS); \
status=$$?; \
$(BIN)/python -m stylelab.report multirun/$(1)/$(STUDY_STAMP) --out reports/$(1)-$(STUDY_STAMP).html \
	--title "$(1) $(STUDY_STAMP)" $(2) || status=$$?; \
exit $$status
endef

.PHONY: studies study-layers study-style-weight study-gallery-offline

studies: study-layers study-style-weight study-gallery-offline  ## all three studies, offline

study-layers:  ## layer study offline: approach1 vs approach2 on 4 pairs (8 jobs), then its report
	$(call study,layer_study_offline,--color-by layers --label-by pair)

study-style-weight:  ## style-weight study offline: 1e3, 1e4, 1e6 on 2 pairs (6 jobs), then its report
	$(call study,style_weight_study_offline,--color-by style_weight --label-by pair)

study-gallery-offline:  ## the gallery on the 4 offline pairs (4 jobs), then its report
	$(call study,gallery_offline)
