"""The audit room: the hash-chained NEN 7513 trail (trail), its signed checkpoints and
verification (integrity), the trail's own retention, the patient disclosure report and
export, and the privacy officer's review.

May import: the frame and the form room (BSN checks).
"""
