"""The diagnostic classifier (notebook 02): the MLP head on frozen image embeddings (``model``), the classifier
stage that trains and evaluates it beside a linear probe and CLIP zero-shot (``stage``), and its figures
(``views``)."""
