#!/usr/bin/env bash
# Downloads a standard corpus and turns it into token shards with
# `longtrain prepare`.
#
#   scripts/get_data.sh NAME      NAME: enwik8 | text8 | tiny-shakespeare | pg19
#
# Raw files land in $DATA_DIR/NAME/raw, shards in $DATA_DIR/NAME/shards
# (DATA_DIR defaults to datasets/ in the repository). Downloads are kept, so a
# second run only re-prepares. Environment:
#   DATA_DIR     where corpora go (default: <repo>/datasets)
#   LONGTRAIN    the binary (default: $BUILD_DIR/longtrain, BUILD_DIR=<repo>/build)
#   TOKENIZER    override the tokenizer chosen below (bytes | spm:MODEL | train-spm:VOCAB)
#   PG19_BOOKS   how many PG-19 test-split books to fetch (default 20)
#
# Tokenizers: enwik8, text8 and tiny-shakespeare are character-level corpora
# (bits per character is their metric; Longformer's char-LM used bytes), so
# they use bytes. PG-19 is word-level (its paper reports word perplexity over
# a subword vocabulary), so it trains a SentencePiece BPE model of 8192 pieces
# on the training books.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
LONGTRAIN="${LONGTRAIN:-$BUILD_DIR/longtrain}"
DATA_DIR="${DATA_DIR:-$ROOT/datasets}"
PG19_BOOKS="${PG19_BOOKS:-20}"

usage() {
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -eq 1 ]] || usage
NAME="$1"
case "$NAME" in
  enwik8 | text8 | tiny-shakespeare | pg19) ;;
  *) echo "get_data.sh: unknown corpus '$NAME'" >&2; usage ;;
esac
if [[ ! -x "$LONGTRAIN" ]]; then
  echo "get_data.sh: $LONGTRAIN not found; build first (scripts/setup.sh) or set LONGTRAIN" >&2
  exit 1
fi

RAW="$DATA_DIR/$NAME/raw"
OUT="$DATA_DIR/$NAME/shards"
mkdir -p "$RAW"

# fetch URL FILE: downloads once, through a partial file so an interrupted
# download is never mistaken for a complete one.
fetch() {
  local url="$1" file="$2"
  if [[ -s "$file" ]]; then
    echo "have $file"
    return
  fi
  echo "downloading $url"
  curl -fL --retry 3 --retry-delay 2 -o "$file.part" "$url"
  mv "$file.part" "$file"
}

# unzip_member ZIP MEMBER OUT
unzip_member() {
  if command -v unzip > /dev/null; then
    unzip -p "$1" "$2" > "$3.part"
  else
    python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
      "$1" "$2" > "$3.part"
  fi
  mv "$3.part" "$3"
}

prepare() {
  "$LONGTRAIN" prepare "$@" --out "$OUT"
}

# The 90M / 5M / 5M protocol of the Hutter-prize corpora (Al-Rfou et al. 2019,
# Longformer): prepare reads the first 95M bytes and holds out their tail, cut
# at a line break, as validation (about the next 5M); the last 5M are kept in
# test.txt for `longtrain eval CKPT --data .../test.txt`.
hutter() {
  local file="$1"
  head -c 95000000 "$RAW/$file" > "$RAW/train_val.txt"
  tail -c 5000000 "$RAW/$file" > "$RAW/test.txt"
  prepare "$RAW/train_val.txt" --tokenizer "${TOKENIZER:-bytes}" --val-fraction 0.0526316
}

case "$NAME" in
  enwik8)
    fetch http://mattmahoney.net/dc/enwik8.zip "$RAW/enwik8.zip"
    [[ -s "$RAW/enwik8" ]] || unzip_member "$RAW/enwik8.zip" enwik8 "$RAW/enwik8"
    hutter enwik8
    ;;
  text8)
    fetch http://mattmahoney.net/dc/text8.zip "$RAW/text8.zip"
    [[ -s "$RAW/text8" ]] || unzip_member "$RAW/text8.zip" text8 "$RAW/text8"
    hutter text8
    ;;
  tiny-shakespeare)
    # One 1.1 MB file; its last 10% is validation, as in char-rnn and nanoGPT.
    fetch https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt "$RAW/input.txt"
    prepare "$RAW/input.txt" --tokenizer "${TOKENIZER:-bytes}" --val-fraction 0.1
    ;;
  pg19)
    # The first PG19_BOOKS books (by object name) of the official test split,
    # listed through the bucket's public JSON API; each book is one document.
    listing="$RAW/listing.json"
    fetch "https://storage.googleapis.com/storage/v1/b/deepmind-gutenberg/o?prefix=test/&fields=items(name)&maxResults=1000" \
      "$listing"
    mapfile -t books < <(grep -o '"test/[^"]*\.txt"' "$listing" | tr -d '"' | sort | head -n "$PG19_BOOKS")
    if [[ ${#books[@]} -eq 0 ]]; then
      echo "get_data.sh: no books in the PG-19 listing ($listing); remove it and retry" >&2
      exit 1
    fi
    mkdir -p "$RAW/books"
    for name in "${books[@]}"; do
      fetch "https://storage.googleapis.com/deepmind-gutenberg/$name" "$RAW/books/$(basename "$name")"
    done
    prepare "$RAW/books" --tokenizer "${TOKENIZER:-train-spm:8192}" --spm-type bpe --val-fraction 0.1
    ;;
esac

echo
echo "shards in $OUT; train on them with:"
echo "  $LONGTRAIN train RECIPE --set data.source=shards --set 'data.paths=[$OUT]'"
