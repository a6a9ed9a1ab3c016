"""Data: sources (folder, Kaggle-flat, zip, s3://), image checks, the tf.data input, augmentation."""
