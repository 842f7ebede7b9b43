#!/usr/bin/env node
// Produces streamproc chunks from a JSON-lines file with @platformatic/kafka and avsc, following
// the wire contract: Avro single-object encoding of avro/chunk.avsc (C3 01, the little-endian
// CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, the Avro binary body), the lane
// topic chosen by low_priority, the chunk's stable id as the key.
//
//   node producer.js --bootstrap-servers localhost:9092 --topic-prefix chunks \
//       --input ../chunks.jsonl [--schema ../../avro/chunk.avsc]

import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import avro from 'avsc'
import { ProduceAcks, Producer, compatibilityPartitioner } from '@platformatic/kafka'

const CHUNK_KEY_NAMESPACE = 'a6624f05-2fa3-4f6c-868d-e1d9182bcea4'
const SINGLE_OBJECT_MARKER = Buffer.from([0xc3, 0x01])

// CRC-64-AVRO (the Rabin fingerprint of the Avro specification), as unsigned 64-bit BigInts.
const CRC64_EMPTY = 0xc15d213aa4d7a795n
const CRC64_TABLE = Array.from({ length: 256 }, (_, index) => {
  let fp = BigInt(index)
  for (let bit = 0; bit < 8; bit++) {
    fp = (fp >> 1n) ^ (CRC64_EMPTY & -(fp & 1n))
  }
  return fp
})

export function crc64Avro (bytes) {
  let fp = CRC64_EMPTY
  for (const byte of bytes) {
    fp = (fp >> 8n) ^ CRC64_TABLE[Number((fp ^ BigInt(byte)) & 0xffn)]
  }
  return fp
}

// The 10-byte single-object header of a schema. avsc's schema() is the Parsing Canonical Form
// (full names, only the attributes that matter for parsing, in the specification's order).
export function singleObjectHeader (type) {
  const fingerprint = Buffer.alloc(8)
  fingerprint.writeBigUInt64LE(crc64Avro(Buffer.from(JSON.stringify(type.schema()), 'utf8')))
  return Buffer.concat([SINGLE_OBJECT_MARKER, fingerprint])
}

// metadata is any JSON value, carried as compact JSON text with sorted object keys.
function canonicalJson (value) {
  if (Array.isArray(value)) {
    return `[${value.map(canonicalJson).join(',')}]`
  }
  if (value !== null && typeof value === 'object') {
    const entries = Object.keys(value).sort().map(name => `${JSON.stringify(name)}:${canonicalJson(value[name])}`)
    return `{${entries.join(',')}}`
  }
  return JSON.stringify(value)
}

// A JSON-lines object as a record of the schema: known fields only, metadata as text, absent
// fields left to the schema defaults.
export function toRecord (type, chunk) {
  const fields = new Set(type.fields.map(field => field.name))
  for (const name of Object.keys(chunk)) {
    if (!fields.has(name)) {
      throw new Error(`${name}: not a field of ${type.name}`)
    }
  }
  const record = { ...chunk }
  if (record.metadata !== undefined && record.metadata !== null) {
    record.metadata = canonicalJson(record.metadata)
  }
  return record
}

// JSON text the way Python's json.dumps writes it by default: everything outside printable
// ASCII as \uXXXX of its UTF-16 code units (JSON.stringify already escapes control characters).
function pythonJson (value) {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, c => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

// RFC 4122 name-based UUID, version 5 (SHA-1).
function uuidV5 (namespace, name) {
  const hash = createHash('sha1')
    .update(Buffer.from(namespace.replaceAll('-', ''), 'hex'))
    .update(Buffer.from(name, 'utf8'))
    .digest()
  hash[6] = (hash[6] & 0x0f) | 0x50
  hash[8] = (hash[8] & 0x3f) | 0x80
  const hex = hash.subarray(0, 16).toString('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

// The chunk's stable id: its tracking_id when set, else the UUIDv5 of its identity.
export function chunkKey (chunk) {
  if (chunk.tracking_id) {
    return chunk.tracking_id
  }
  const identity = ['dataset_id', 'chunk_html', 'link', 'semantic_content', 'fulltext_content']
    .map(name => chunk[name] ?? null)
  return uuidV5(CHUNK_KEY_NAMESPACE, pythonJson(identity))
}

function readChunks (path) {
  const text = readFileSync(path === '-' ? 0 : path, 'utf8')
  return text.split('\n').flatMap((line, index) => {
    if (!line.trim()) {
      return []
    }
    try {
      return [JSON.parse(line)]
    } catch (error) {
      throw new Error(`line ${index + 1}: ${error.message}`)
    }
  })
}

async function main () {
  const { values: options } = parseArgs({
    options: {
      'bootstrap-servers': { type: 'string', default: process.env.KAFKA_BOOTSTRAP_SERVERS },
      'topic-prefix': { type: 'string', default: 'chunks' },
      input: { type: 'string', default: '-' },
      schema: { type: 'string', default: fileURLToPath(new URL('../../avro/chunk.avsc', import.meta.url)) }
    }
  })
  if (!options['bootstrap-servers']) {
    throw new Error('--bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS) is required')
  }
  const type = avro.Type.forSchema(JSON.parse(readFileSync(options.schema, 'utf8')))
  const header = singleObjectHeader(type)

  const messages = readChunks(options.input).map((chunk, index) => {
    const record = toRecord(type, chunk)
    let body
    try {
      body = type.toBuffer(record)
    } catch (error) {
      throw new Error(`chunk ${index + 1}: ${error.message}`)
    }
    const lane = record.low_priority ? 'bulk' : 'realtime'
    return {
      topic: `${options['topic-prefix']}.${lane}`,
      key: Buffer.from(chunkKey(chunk), 'utf8'),
      value: Buffer.concat([header, body])
    }
  })

  const producer = new Producer({
    clientId: 'streamproc-node-example',
    bootstrapBrokers: options['bootstrap-servers'].split(','),
    idempotent: true, // implies acks from all in-sync replicas
    acks: ProduceAcks.ALL,
    // Kafka's murmur2 partitioning as the Java client does it, so one key lands on the same
    // partition whichever client produced it (the default partitioner differs for some keys).
    partitioner: compatibilityPartitioner
  })
  try {
    await producer.send({ messages })
  } finally {
    await producer.close()
  }
  const bulk = messages.filter(message => message.topic.endsWith('.bulk')).length
  console.log(`produced ${messages.length} chunks: ${messages.length - bulk} realtime, ${bulk} bulk`)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch(error => {
    console.error(`chunk-producer: ${error.stack ?? error}`)
    process.exitCode = 1
  })
}
