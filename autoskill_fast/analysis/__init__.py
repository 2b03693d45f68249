"""What a basis says about a corpus: example rankings, data selection (poles, coverage, baselines), inspection and the
HTML report, and the comparison of two models' bases."""
