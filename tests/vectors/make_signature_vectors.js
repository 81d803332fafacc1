#!/usr/bin/env node
// Generates tests/vectors/signature_vectors.json: Cobalt webhook signature test vectors.
//
// Regenerate (from the repository root, Node 18+; no npm packages needed):
//
//     node tests/vectors/make_signature_vectors.js
//
// Each vector is computed exactly as Cobalt's sample does:
//     body = JSON.stringify(payload)
//     signature = crypto.createHmac('sha256', secret).update(body).digest('hex')
// `update(body)` on a JS string hashes its UTF-8 bytes, so `body` encoded as UTF-8 is what was
// signed. `pretty_body` is JSON.stringify(payload, null, 2): the same payload re-formatted, as a
// proxy might deliver it, for testing the compact re-serialisation fallback.
//
// Deliberately NOT covered, because JSON.stringify and Python's json.dumps cannot agree on them:
//   - floats with a fractional or exponent form, which the two languages print differently
//     (1.0 is "1" in JS but "1.0" in Python; 1e16 is "10000000000000000" vs "1e+16"; 1e-7 is
//     "1e-7" vs "1e-07"), NaN/Infinity (JS prints null), and integers beyond 2**53 (JS rounds);
//   - integer-like object keys ("1", "42"): JS enumerates them first, in ascending numeric order,
//     whatever order they were written in, so the key order of the body differs from the payload;
//   - lone surrogates (JS escapes them as \udXXX; Python cannot encode them as UTF-8).
// The payloads below are written literally so the output is byte-for-byte reproducible.

'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const SECRETS = {
  primary: 'whsec_test_2b7e151628aed2a6abf7158809cf4f3c',
  rotated: 'whsec_test_rotated_3243f6a8885a308d313198a2',
  unicode: 'whsec_tëst_ключ_秘密_🔑',
};

const envelope = (type, data, extra = {}) => ({
  id: 'evt_01HZX4Q7M2V9K3T8B5N6C1D0EF',
  access_token_reference_id: 'clinic-42',
  object: 'event',
  created: '2024-05-17T14:03:22.123Z',
  type,
  job_id: 'job_7f3c9a2e',
  ...extra,
  data,
});

const CASES = [
  {
    name: 'note_created_ascii',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      note_id: 'note_123',
      appointment_id: 'appt_456',
      patient_id: 'pat_789',
      status: 'written',
    }),
  },
  {
    name: 'note_created_rotated_secret',
    secret: SECRETS.rotated,
    payload: envelope('note.uploaded', { note_id: 'note_124', appointment_id: 'appt_457' }),
  },
  {
    name: 'non_ascii_accents_and_cjk',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      patient_name: 'Zoë Brontë-Müller',
      city: 'São Paulo',
      note: 'Patiënt klaagt over hoofdpijn; café, naïve, façade',
      cjk: '患者は頭痛を訴えています。头痛。두통',
      greek_cyrillic: 'Ωμέγα / Щука',
      rtl: 'مرحبا שלום',
    }),
  },
  {
    name: 'emoji_astral_plane',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      note: 'Feeling better 😀👍🏽 — family: 👨‍👩‍👧‍👦, flag 🇳🇱',
      math: '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛',
      old: '𐍈 𓀀',
    }),
  },
  {
    name: 'slash_and_script_tag',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      url: 'https://example.com/a/b?c=d&e=f#g',
      html: '</script><script>alert("x")</script>',
      comment: '<!-- --> & &amp; <b>bold</b>',
      path: '/var/log/../etc/passwd',
    }),
  },
  {
    name: 'whitespace_and_control_characters',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      multiline: 'line one\nline two\r\nline three\rend',
      tabs: 'col1\tcol2\t\tcol4',
      controls: 'nul:\u0000 bell:\u0007 bs:\b vt:\u000b ff:\f esc:\u001b us:\u001f del:\u007f',
      c1: 'nel:\u0085 nbsp:\u00a0',
    }),
  },
  {
    name: 'quotes_and_backslashes',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      quoted: 'He said "no" and \'maybe\'',
      windows_path: 'C:\\Users\\dr\\notes\\new.txt',
      escapes_as_text: '\\n is not a newline, \\u0041 is not A, \\" is not a quote',
      trailing_backslash: 'ends with \\',
    }),
  },
  {
    name: 'line_and_paragraph_separators',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      ls: 'before\u2028after',
      ps: 'before\u2029after',
      both: '\u2028\u2029',
      bom_and_zero_width: '\ufeffstart \u200b\u200c\u200d end',
    }),
  },
  {
    name: 'nested_arrays_and_objects',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      sections: [
        { title: 'Subjective', lines: ['a', 'b', ['c', ['d', []]]] },
        { title: 'Objective', vitals: { bp: { systolic: 120, diastolic: 80 }, pulse: 72 } },
        { title: 'Empty', lines: [], meta: {} },
      ],
      matrix: [[1, 2], [3, 4], [[5], [6, [7, [8]]]]],
      deep: { a: { b: { c: { d: { e: { f: ['g'] } } } } } },
    }),
  },
  {
    name: 'empty_strings_and_scalars',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      empty: '',
      empty_list: [],
      empty_object: {},
      zero: 0,
      negative: -17,
      large_safe_int: 9007199254740991,
      small_safe_int: -9007199254740991,
      truthy: true,
      falsy: false,
      nothing: null,
      mixed: ['', 0, false, null, true, 'x', -1],
      '': 'empty key',
      'key with spaces': 'v',
      'ключ': 'значение',
    }),
  },
  {
    name: 'telephone_encounter_failed_medications',
    secret: SECRETS.primary,
    payload: envelope('telephone_encounter.failed', {
      telephone_encounter_id: 'te_9c1d2e3f',
      failure_reason: 'Medication "Amoxicillin 500 mg" not found; choose one of available_medications',
      reasons: [
        { code: 'medication_not_found', description: 'No match for "Amoxicillin 500 mg"' },
        { code: 'ambiguous_medication', description: 'Multiple matches for "Ibuprofen"' },
      ],
      available_medications: [
        { id: 'med_001', name: 'Amoxicillin 250 mg/5 mL oral suspension', active: true },
        { id: 'med_002', name: 'Ibuprofen 200 mg tablet', active: true },
        { id: 'med_003', name: 'Ibuprofen 400 mg tablet', active: false },
        { id: 'med_004', name: 'Paracétamol 500 mg comprimé', active: true, refills: 0 },
        { id: 'med_005', name: 'Lisinopril 10 mg', active: true, refills: 3, notes: null },
      ],
    }),
  },
  {
    name: 'telephone_encounter_created_partial',
    secret: SECRETS.rotated,
    payload: envelope('telephone_encounter.created_partial', {
      telephone_encounter_id: 'te_0a1b2c3d',
      warnings: ['refill quantity truncated', 'pharmacy not found'],
      attempt: 2,
    }),
  },
  {
    name: 'legacy_payload_without_job_id',
    secret: SECRETS.primary,
    payload: {
      id: 'evt_legacy_001',
      created: '2023-01-02T03:04:05Z',
      type: 'login_required',
      data: { access_token_reference_id: 'clinic-7', message: 'Please re-link your EHR account.' },
    },
  },
  {
    name: 'unicode_secret',
    secret: SECRETS.unicode,
    payload: envelope('note.created', { note: 'signed with a non-ASCII secret: ключ 🔑' }),
  },
  {
    name: 'kitchen_sink',
    secret: SECRETS.primary,
    payload: envelope('note.created', {
      text: 'Ünïcødé "quoted" \\ back\\slash / slash </script>\n\t\u2028\u2029😀\u0000',
      list: [null, true, false, 0, -1, '', '😀', { '': '' }, [[]]],
    }),
  },
];

const vectors = CASES.map(({ name, secret, payload }) => {
  const body = JSON.stringify(payload);
  const signature = crypto.createHmac('sha256', secret).update(body).digest('hex');
  return {
    name,
    secret,
    payload,
    body,
    pretty_body: JSON.stringify(payload, null, 2),
    signature,
  };
});

const names = new Set(vectors.map((v) => v.name));
if (names.size !== vectors.length) {
  throw new Error('vector names must be unique');
}

const out = path.join(__dirname, 'signature_vectors.json');
fs.writeFileSync(out, JSON.stringify(vectors, null, 2) + '\n', 'utf8');
console.log(`wrote ${vectors.length} vectors to ${path.relative(process.cwd(), out)}`);
