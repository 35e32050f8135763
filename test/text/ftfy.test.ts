// ftfy repairs, one case per fixer. Expected values are the output of Python ftfy 6.3.1's fix_text() on
// the same inputs (the version in STAR's reference environment; see clip-tokenizer/expected.json).
import { describe, expect, it } from 'vitest';
import { fixText, isBad } from '../../model/text/ftfy.js';

const CASES: Array<[what: string, input: string, expected: string]> = [
  ['named entities', 'salt &amp; pepper &eacute;t&eacute; &hellip; &notanentity;', 'salt & pepper été … &notanentity;'],
  ['upper-case spelling of a lower-case entity', '&NTILDE;o &EACUTE; &AMP;', 'Ño É &'],
  ['upper-case spelling that starts with a legacy entity stays', '&GTCC; &LTDOT;', '&GTCC; &LTDOT;'],
  ['numeric references', '&#65;&#x42;&#X43; &#150; &#x80; &#0; &#xD800; &#1114112; &#59; &#12a;', 'ABC – € \ufffd \ufffd \ufffd &#59; &#12a;'],
  ['double-escaped entities', '&amp;lt;tag&amp;gt;', '<tag>'],
  ['a line with "<" stops unescaping from there on', 'a &amp; b\nc < d &amp; e\nf &amp; g', 'a & b\nc < d &amp; e\nf &amp; g'],
  ['latin-1 mojibake', 'cafÃ© naÃ\xafve', 'café naïve'],
  ['windows-1252 mojibake', 'Itâ€™s â€œquotedâ€\x9d', 'It\'s "quoted"'],
  ['windows-1251 mojibake', 'РџСЂРёРІРµС‚', 'Привет'],
  ['macroman mojibake', 'caf√© ‚Äúquoted‚Äù', 'café "quoted"'],
  ['cp437 mojibake', 'caf├⌐', 'café'],
  ['mojibake of mojibake', 'cafÃƒÂ©', 'café'],
  ['mojibake next to good text', 'naïve cafÃ©', 'naïve café'],
  ['lost bytes', 'cafÃ? and â€?', 'caf\ufffd and \ufffd'],
  ['no-break space turned into a space', 'Ã  la carte', 'à la carte'],
  ['CESU-8 surrogate pair', 'í\xa0½í\xb8€', '😀'],
  ['C1 controls read as windows-1252', 'caf\x82 \x85 \x93x\x94', 'caf\' … "x"'],
  ['accented capitals stay', 'Ångström Zürich señor ÓRGANO Ó”', 'Ångström Zürich señor ÓRGANO Ó"'],
  ['symbols stay', '½ cup, 100°C, ±5%, £5, ©2024, ™', '½ cup, 100°C, ±5%, £5, ©2024, ™'],
  ['ligatures', 'ﬁne ﬂat ﬀ ﬃ ﬅ Ĳ Ǆ ǈ Ǳ ǆ ŉ', 'fine flat ff ffi ſt IJ DŽ Lj DZ dž \'n'],
  ['full width and half width', 'ＦＵＬＬ\u3000ｗｉｄｔｈ！ ｶﾀｶﾅ', 'FULL width! カタカナ'],
  ['curly quotes', '“double” ‘single’ ‛rev‟ ʼ', '"double" \'single\' \'rev" \''],
  ['line breaks', 'a\r\nb\rc\u2028d\u2029e', 'a\nb\nc\nd\ne'],
  ['control characters', 'a\x00b\x07c\x1bd\ufeffe\u206af\ufffag', 'abcdefg'],
  ['terminal escapes', '\x1b[31mred\x1b[0m', 'red'],
  ['NFC', 'cafe\u0301 A\u030a', 'café Å'],
  ['lone surrogate', 'a\ud800b', 'a\ufffdb'],
  ['plain ascii', 'a photo of a cat', 'a photo of a cat'],
  ['CJK and emoji stay', '東京の夜景 🐱👍🏽 ❤\ufe0f', '東京の夜景 🐱👍🏽 ❤\ufe0f'],
];

describe('fixText (ftfy.fix_text)', () => {
  it.each(CASES)('%s', (_what, input, expected) => {
    expect(fixText(input)).toBe(expected);
  });

  it('is idempotent on its own output', () => {
    for (const [, , expected] of CASES) expect(fixText(expected)).toBe(expected);
  });
});

describe('isBad (mojibake heuristic)', () => {
  it.each([
    ['cafÃ©', true],
    ['â€œ', true],
    ['café', false],
    ['Ångström', false],
    ['½ cup at 100°C', false],
  ] as const)('%s → %s', (text, bad) => {
    expect(isBad(text)).toBe(bad);
  });
});
