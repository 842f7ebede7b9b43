// Command chunk-producer produces streamproc chunks from a JSON-lines file with franz-go and
// hamba/avro, following the wire contract: Avro single-object encoding of avro/chunk.avsc, the
// lane topic chosen by low_priority, the chunk's stable id as the key.
//
// Produce to Kafka:
//
//	chunk-producer -bootstrap-servers localhost:9092 -topic-prefix chunks -input chunks.jsonl
//
// Or only encode, one framed value per file plus manifest.tsv (lane, key, file), for tools such
// as kcat that send bytes they did not encode themselves:
//
//	chunk-producer -encode-to out/ -input chunks.jsonl
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/hamba/avro/v2/soe"
	"github.com/twmb/franz-go/pkg/kgo"
)

// chunkKeyNamespace is the UUIDv5 namespace of derived chunk keys (wire contract).
var chunkKeyNamespace = uuid.MustParse("a6624f05-2fa3-4f6c-868d-e1d9182bcea4")

// GeoInfo is a point on Earth in degrees.
type GeoInfo struct {
	Lat float64 `json:"lat" avro:"lat"`
	Lon float64 `json:"lon" avro:"lon"`
}

// FullTextBoost boosts a phrase in the full-text index.
type FullTextBoost struct {
	Phrase      string  `json:"phrase" avro:"phrase"`
	BoostFactor float64 `json:"boost_factor" avro:"boost_factor"`
}

// SemanticBoost moves the embedding towards a phrase.
type SemanticBoost struct {
	Phrase         string  `json:"phrase" avro:"phrase"`
	DistanceFactor float64 `json:"distance_factor" avro:"distance_factor"`
}

// Chunk is one line of the input and one record of avro/chunk.avsc. Pointers and nil slices are
// the null branch of the schema's ["null", T] unions.
type Chunk struct {
	ChunkHTML          *string         `json:"chunk_html" avro:"chunk_html"`
	SemanticContent    *string         `json:"semantic_content" avro:"semantic_content"`
	FulltextContent    *string         `json:"fulltext_content" avro:"fulltext_content"`
	Link               *string         `json:"link" avro:"link"`
	TagSet             []string        `json:"tag_set" avro:"tag_set"`
	NumValue           *float64        `json:"num_value" avro:"num_value"`
	Metadata           json.RawMessage `json:"metadata" avro:"-"`
	MetadataText       *string         `json:"-" avro:"metadata"`
	TrackingID         *string         `json:"tracking_id" avro:"tracking_id"`
	UpsertByTrackingID *bool           `json:"upsert_by_tracking_id" avro:"upsert_by_tracking_id"`
	GroupIDs           []string        `json:"group_ids" avro:"group_ids"`
	GroupTrackingIDs   []string        `json:"group_tracking_ids" avro:"group_tracking_ids"`
	TimeStamp          *string         `json:"time_stamp" avro:"time_stamp"`
	Location           *GeoInfo        `json:"location" avro:"location"`
	ImageURLs          []string        `json:"image_urls" avro:"image_urls"`
	Weight             *float64        `json:"weight" avro:"weight"`
	SplitAvg           *bool           `json:"split_avg" avro:"split_avg"`
	ConvertHTMLToText  *bool           `json:"convert_html_to_text" avro:"convert_html_to_text"`
	FulltextBoost      *FullTextBoost  `json:"fulltext_boost" avro:"fulltext_boost"`
	SemanticBoost      *SemanticBoost  `json:"semantic_boost" avro:"semantic_boost"`
	LowPriority        bool            `json:"low_priority" avro:"low_priority"`
	DatasetID          *string         `json:"dataset_id" avro:"dataset_id"`
}

// Lane is the lane the chunk belongs to: bulk when low_priority, realtime otherwise.
func (c *Chunk) Lane() string {
	if c.LowPriority {
		return "bulk"
	}
	return "realtime"
}

// Key is the chunk's stable id: its tracking_id when set, else the UUIDv5 of its identity.
func (c *Chunk) Key() string {
	if c.TrackingID != nil && *c.TrackingID != "" {
		return *c.TrackingID
	}
	identity := pythonJSONArray(c.DatasetID, c.ChunkHTML, c.Link, c.SemanticContent, c.FulltextContent)
	return uuid.NewSHA1(chunkKeyNamespace, []byte(identity)).String()
}

// pythonJSONArray writes the strings as a compact JSON array the way Python's json.dumps does by
// default (ensure_ascii): every character outside printable ASCII becomes \uXXXX, characters
// beyond the Basic Multilingual Plane as a UTF-16 surrogate pair.
func pythonJSONArray(values ...*string) string {
	var out strings.Builder
	out.WriteByte('[')
	for i, value := range values {
		if i > 0 {
			out.WriteByte(',')
		}
		if value == nil {
			out.WriteString("null")
			continue
		}
		out.WriteByte('"')
		for _, r := range *value {
			switch {
			case r == '"':
				out.WriteString(`\"`)
			case r == '\\':
				out.WriteString(`\\`)
			case r == '\n':
				out.WriteString(`\n`)
			case r == '\r':
				out.WriteString(`\r`)
			case r == '\t':
				out.WriteString(`\t`)
			case r == '\b':
				out.WriteString(`\b`)
			case r == '\f':
				out.WriteString(`\f`)
			case r >= ' ' && r <= '~':
				out.WriteRune(r)
			case r > 0xFFFF:
				high, low := utf16.EncodeRune(r)
				fmt.Fprintf(&out, `\u%04x\u%04x`, high, low)
			default:
				fmt.Fprintf(&out, `\u%04x`, r)
			}
		}
		out.WriteByte('"')
	}
	out.WriteByte(']')
	return out.String()
}

// canonicalMetadata turns the metadata JSON value into the text the schema carries: compact,
// object keys sorted, numbers exactly as written in the input.
func canonicalMetadata(raw json.RawMessage) (*string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	decoder := json.NewDecoder(bytes.NewReader(raw))
	decoder.UseNumber()
	var value any
	if err := decoder.Decode(&value); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	encoder := json.NewEncoder(&out)
	encoder.SetEscapeHTML(false)
	if err := encoder.Encode(value); err != nil { // maps encode with sorted keys
		return nil, err
	}
	text := strings.TrimSuffix(out.String(), "\n")
	return &text, nil
}

// readChunks parses the JSON-lines input; blank lines are skipped, unknown fields refused.
func readChunks(input io.Reader) ([]Chunk, error) {
	var chunks []Chunk
	scanner := bufio.NewScanner(input)
	scanner.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for line := 1; scanner.Scan(); line++ {
		text := bytes.TrimSpace(scanner.Bytes())
		if len(text) == 0 {
			continue
		}
		decoder := json.NewDecoder(bytes.NewReader(text))
		decoder.DisallowUnknownFields()
		var chunk Chunk
		if err := decoder.Decode(&chunk); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		metadata, err := canonicalMetadata(chunk.Metadata)
		if err != nil {
			return nil, fmt.Errorf("line %d: metadata: %w", line, err)
		}
		chunk.MetadataText = metadata
		chunks = append(chunks, chunk)
	}
	return chunks, scanner.Err()
}

// encoded is one chunk ready for Kafka.
type encoded struct {
	lane  string
	key   string
	value []byte
}

// parsingFingerprint is the CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form in
// wire order (little-endian). The specification's canonical form keeps only the attributes that
// matter for parsing, so it drops logicalType; hamba/avro's canonical form keeps it (v2.31), which
// would give a fingerprint no other Avro library computes for this schema. Fingerprinting a copy
// without logicalType attributes gives the specification's answer.
func parsingFingerprint(schemaJSON []byte) ([]byte, error) {
	var tree any
	if err := json.Unmarshal(schemaJSON, &tree); err != nil {
		return nil, err
	}
	stripped, err := json.Marshal(withoutLogicalTypes(tree))
	if err != nil {
		return nil, err
	}
	schema, err := avro.ParseBytes(stripped)
	if err != nil {
		return nil, err
	}
	return schema.FingerprintUsing(avro.CRC64AvroLE)
}

func withoutLogicalTypes(node any) any {
	switch value := node.(type) {
	case map[string]any:
		out := make(map[string]any, len(value))
		for name, child := range value {
			if name != "logicalType" {
				out[name] = withoutLogicalTypes(child)
			}
		}
		return out
	case []any:
		out := make([]any, len(value))
		for i, child := range value {
			out[i] = withoutLogicalTypes(child)
		}
		return out
	default:
		return value
	}
}

// avroAPI writes arrays the way Java's Avro does: one block holding the item count and no byte
// size. hamba/avro's default (blocks of 100 with a byte size) is valid Avro too, but some
// decoders do not support it and the bytes would differ from the golden vectors.
var avroAPI = avro.Config{DisableBlockSizeHeader: true, BlockLength: math.MaxInt32}.Freeze()

func encodeAll(schemaPath string, chunks []Chunk) ([]encoded, error) {
	schemaJSON, err := os.ReadFile(schemaPath)
	if err != nil {
		return nil, err
	}
	schema, err := avro.ParseBytes(schemaJSON)
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", schemaPath, err)
	}
	fingerprint, err := parsingFingerprint(schemaJSON)
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", schemaPath, err)
	}
	// Avro single-object encoding: C3 01, the 8-byte fingerprint, then the Avro binary body.
	header, err := soe.BuildHeaderForFingerprint(fingerprint)
	if err != nil {
		return nil, err
	}
	out := make([]encoded, 0, len(chunks))
	for i := range chunks {
		body, err := avroAPI.Marshal(schema, &chunks[i])
		if err != nil {
			return nil, fmt.Errorf("chunk %d: %w", i+1, err)
		}
		value := append(append(make([]byte, 0, len(header)+len(body)), header...), body...)
		out = append(out, encoded{lane: chunks[i].Lane(), key: chunks[i].Key(), value: value})
	}
	return out, nil
}

func produce(brokers, prefix string, values []encoded) error {
	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(brokers, ",")...),
		// Explicit although they are franz-go's defaults: acks from all in-sync replicas,
		// idempotent writes, and Kafka's murmur2 key partitioning (the Java client's), so one
		// key lands on the same partition whichever client produced it.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerLinger(5*time.Millisecond),
	)
	if err != nil {
		return err
	}
	defer client.Close()
	records := make([]*kgo.Record, 0, len(values))
	for _, value := range values {
		records = append(records, &kgo.Record{
			Topic: prefix + "." + value.lane,
			Key:   []byte(value.key),
			Value: value.value,
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return client.ProduceSync(ctx, records...).FirstErr()
}

// writeFiles writes one framed value per file and manifest.tsv naming lane, key and file.
func writeFiles(dir string, values []encoded) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var manifest strings.Builder
	for i, value := range values {
		if strings.ContainsAny(value.key, "\t\n\r") {
			return fmt.Errorf("chunk %d: key %q cannot go into a tab-separated manifest", i+1, value.key)
		}
		name := fmt.Sprintf("%04d.avro", i+1)
		if err := os.WriteFile(filepath.Join(dir, name), value.value, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&manifest, "%s\t%s\t%s\n", value.lane, value.key, name)
	}
	return os.WriteFile(filepath.Join(dir, "manifest.tsv"), []byte(manifest.String()), 0o644)
}

// defaultSchemaPath finds avro/chunk.avsc in the working directory or the nearest parent that
// has one, so the example runs from anywhere inside the repository.
func defaultSchemaPath() string {
	relative := filepath.Join("avro", "chunk.avsc")
	dir, err := os.Getwd()
	if err != nil {
		return relative
	}
	for {
		candidate := filepath.Join(dir, relative)
		if _, err := os.Stat(candidate); err == nil {
			return candidate
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return relative
		}
		dir = parent
	}
}

func run() error {
	brokers := flag.String("bootstrap-servers", os.Getenv("KAFKA_BOOTSTRAP_SERVERS"), "Kafka bootstrap servers, comma separated")
	prefix := flag.String("topic-prefix", "chunks", "lane topic prefix: <prefix>.realtime and <prefix>.bulk")
	input := flag.String("input", "-", "JSON-lines file of chunks ('-' reads standard input)")
	schemaPath := flag.String("schema", "", "the chunk schema (default: avro/chunk.avsc in the working directory or the nearest parent that has one)")
	encodeTo := flag.String("encode-to", "", "only encode: write framed values and manifest.tsv into this directory")
	flag.Parse()
	if *schemaPath == "" {
		*schemaPath = defaultSchemaPath()
	}

	reader := io.Reader(os.Stdin)
	if *input != "-" {
		file, err := os.Open(*input)
		if err != nil {
			return err
		}
		defer file.Close()
		reader = file
	}
	chunks, err := readChunks(reader)
	if err != nil {
		return err
	}
	values, err := encodeAll(*schemaPath, chunks)
	if err != nil {
		return err
	}
	if *encodeTo != "" {
		if err := writeFiles(*encodeTo, values); err != nil {
			return err
		}
		fmt.Printf("encoded %d chunks into %s\n", len(values), *encodeTo)
		return nil
	}
	if *brokers == "" {
		return errors.New("-bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS) is required")
	}
	if err := produce(*brokers, *prefix, values); err != nil {
		return err
	}
	lanes := map[string]int{}
	for _, value := range values {
		lanes[value.lane]++
	}
	fmt.Printf("produced %d chunks: %d realtime, %d bulk\n", len(values), lanes["realtime"], lanes["bulk"])
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "chunk-producer:", err)
		os.Exit(1)
	}
}
