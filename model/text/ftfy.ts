// ftfy.fix_text() — the text repair that transformers' slow CLIPTokenizer runs before BPE when ftfy is
// installed (STAR's environment). A TypeScript re-implementation of the behaviour of ftfy 6.3.1 with its
// default settings, so that odd prompts (HTML entities, curly quotes, ligatures, full-width letters,
// mojibake) reach the BPE exactly as they did for STAR. ftfy is Apache-2.0 (Robyn Speer); its character
// tables and mojibake heuristic are reproduced as data below. HTML5 entity names come from `entities`.
import { decodeHTML, decodeHTMLStrict } from 'entities';

/** ftfy.fix_text(text) with the default config. */
export function fixText(text: string): string {
  // ftfy fixes one line at a time (a line keeps its "\n"). HTML entities are decoded only while no line
  // so far has held a "<": upstream switches unescaping off for the rest of the text at the first such line.
  let unescape = true;
  let out = '';
  for (const line of text.match(/[^\n]*\n|[^\n]+$/g) ?? []) {
    if (line.includes('<')) unescape = false;
    out += fixSegment(line, unescape);
  }
  return out;
}

// The fixers run in ftfy's order, and the whole sequence repeats until the text stops changing.
function fixSegment(text: string, unescape: boolean): string {
  for (;;) {
    const before = text;
    if (unescape) text = unescapeHtml(text);
    text = fixEncoding(text);
    text = fixC1Controls(text);
    text = fixLatinLigatures(text);
    text = fixCharacterWidth(text);
    text = text.replace(/[\u02bc\u2018-\u201b]/g, "'").replace(/[\u201c-\u201f]/g, '"'); // uncurl quotes
    text = text.replace(/\r\n|[\r\u2028\u2029\x85]/g, '\n'); // line breaks
    text = text.replace(LONE_SURROGATE, '\ufffd');
    text = text.replace(/\x1b\[[\p{Nd};]*[a-zA-Z]/gu, ''); // terminal escapes
    text = text.replace(/[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g, ''); // control chars
    text = text.normalize('NFC');
    if (text === before) return text;
  }
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

// ---------------------------------------------------------------------------------------------------
// HTML entities: `&name;` (HTML5 names, plus an all-caps spelling of lower-case names such as `&EACUTE;`)
// and `&#…;` character references. The match is bounded to 24 characters and must end in ";".

function unescapeHtml(text: string): string {
  return text.replace(/&#?[0-9A-Za-z]{1,24};/g, (entity) => {
    if (entity.startsWith('&#')) {
      const char = decodeCharRef(entity);
      // A reference that does not decode, or that decodes to ";", stays as written.
      return char === undefined || char.includes(';') ? entity : char;
    }
    const named = decodeHTMLStrict(entity);
    if (named !== entity) return named;
    // Upper-cased lower-case names, unless the upper-case spelling means something to an HTML parser
    // already (for example "&GTCC;" starts with the legacy entity "&GT").
    const lower = entity.toLowerCase();
    if (entity !== lower.toUpperCase() || decodeHTML(entity) !== entity) return entity;
    const lowerChar = decodeHTMLStrict(lower);
    return lowerChar !== lower ? lowerChar.toUpperCase() : entity;
  });
}

// Python's html.unescape rules for numeric references: C1 numbers read as Windows-1252, out-of-range
// numbers and surrogates become U+FFFD, non-characters and most controls vanish.
function decodeCharRef(entity: string): string | undefined {
  const m = /^&#(?:([0-9]+)|[xX]([0-9a-fA-F]+));$/.exec(entity);
  if (!m) return undefined;
  const n = m[1] !== undefined ? parseInt(m[1], 10) : parseInt(m[2]!, 16);
  if (n === 0) return '\ufffd';
  if (n === 0x0d) return '\r';
  if (n >= 0x80 && n <= 0x9f) return CP_1252[n - 0x80];
  if ((n >= 0xd800 && n <= 0xdfff) || n > 0x10ffff) return '\ufffd';
  const noncharacter = (n >= 0xfdd0 && n <= 0xfdef) || (n & 0xfffe) === 0xfffe;
  if ((n >= 0x01 && n <= 0x08) || n === 0x0b || (n >= 0x0e && n <= 0x1f) || n === 0x7f || noncharacter) return '';
  return String.fromCodePoint(n);
}

// ---------------------------------------------------------------------------------------------------
// Single-character fixes.

const LIGATURES: Record<string, string> = {
  'Ĳ': 'IJ', 'ĳ': 'ij', 'ŉ': 'ʼn', 'Ǳ': 'DZ', 'ǲ': 'Dz', 'ǳ': 'dz', 'Ǆ': 'DŽ', 'ǅ': 'Dž', 'ǆ': 'dž',
  'Ǉ': 'LJ', 'ǈ': 'Lj', 'ǉ': 'lj', 'Ǌ': 'NJ', 'ǋ': 'Nj', 'ǌ': 'nj',
  'ﬀ': 'ff', 'ﬁ': 'fi', 'ﬂ': 'fl', 'ﬃ': 'ffi', 'ﬄ': 'ffl', 'ﬅ': 'ſt', 'ﬆ': 'st',
};
const LIGATURE = new RegExp(`[${Object.keys(LIGATURES).join('')}]`, 'g');
function fixLatinLigatures(text: string): string {
  return text.replace(LIGATURE, (c) => LIGATURES[c]!);
}

// Full-width and half-width forms (U+FF01–U+FFEF) become their NFKC form; U+3000 becomes a space.
function fixCharacterWidth(text: string): string {
  return text.replace(/[\u3000\uff01-\uffef]/g, (c) => (c === '\u3000' ? ' ' : c.normalize('NFKC')));
}

// C1 controls have no use outside mojibake: read them as the Windows-1252 characters of those bytes.
function fixC1Controls(text: string): string {
  return text.replace(/[\x80-\x9f]/g, (c) => CP_1252[c.charCodeAt(0) - 0x80]!);
}

// ---------------------------------------------------------------------------------------------------
// Mojibake: text that was UTF-8, decoded as a single-byte code page. When the text looks wrong (the
// badness heuristic) and re-encodes in one of these code pages to valid UTF-8, the UTF-8 reading wins.

// Bytes 0x80–0xFF of each code page, in the order ftfy tries them. "sloppy" pages fill undefined bytes
// with the Latin-1 character and read byte 0x1A as U+FFFD (a character that lost its bytes).
// (Node's TextDecoder is no help: its windows-1252 is Latin-1 in some versions, and cp437 is missing.)
const CP_1252 = '€\x81‚ƒ„…†‡ˆ‰Š‹Œ\x8dŽ\x8f\x90‘’“”•–—˜™š›œ\x9džŸ'; // 0x80–0x9F
const C1_CONTROLS = String.fromCharCode(...Array.from({ length: 32 }, (_, i) => 0x80 + i));
const LATIN1_HIGH = String.fromCharCode(...Array.from({ length: 96 }, (_, i) => 0xa0 + i)); // 0xA0–0xFF
const CODE_PAGES: Array<[name: string, high: string, sloppy: boolean]> = [
  ['latin-1', C1_CONTROLS + LATIN1_HIGH, false],
  ['sloppy-windows-1252', CP_1252 + LATIN1_HIGH, true],
  ['sloppy-windows-1251', 'ЂЃ‚ѓ„…†‡€‰Љ‹ЊЌЋЏђ‘’“”•–—\x98™љ›њќћџ\xa0ЎўЈ¤Ґ¦§Ё©Є«¬\xad®Ї°±Ііґµ¶·ё№є»јЅѕїАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюя', true],
  ['sloppy-windows-1250', '€\x81‚\x83„…†‡\x88‰Š‹ŚŤŽŹ\x90‘’“”•–—\x98™š›śťžź\xa0ˇ˘Ł¤Ą¦§¨©Ş«¬\xad®Ż°±˛ł´µ¶·¸ąş»Ľ˝ľżŔÁÂĂÄĹĆÇČÉĘËĚÍÎĎĐŃŇÓÔŐÖ×ŘŮÚŰÜÝŢßŕáâăäĺćçčéęëěíîďđńňóôőö÷řůúűüýţ˙', true],
  ['sloppy-windows-1253', '€\x81‚ƒ„…†‡\x88‰\x8a‹\x8c\x8d\x8e\x8f\x90‘’“”•–—\x98™\x9a›\x9c\x9d\x9e\x9f\xa0΅Ά£¤¥¦§¨©ª«¬\xad®―°±²³΄µ¶·ΈΉΊ»Ό½ΎΏΐΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡÒΣΤΥΦΧΨΩΪΫάέήίΰαβγδεζηθικλμνξοπρςστυφχψωϊϋόύώÿ', true],
  ['sloppy-windows-1254', '€\x81‚ƒ„…†‡ˆ‰Š‹Œ\x8d\x8e\x8f\x90‘’“”•–—˜™š›œ\x9d\x9eŸ\xa0¡¢£¤¥¦§¨©ª«¬\xad®¯°±²³´µ¶·¸¹º»¼½¾¿ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏĞÑÒÓÔÕÖ×ØÙÚÛÜİŞßàáâãäåæçèéêëìíîïğñòóôõö÷øùúûüışÿ', true],
  ['sloppy-windows-1257', '€\x81‚\x83„…†‡\x88‰\x8a‹\x8c¨ˇ¸\x90‘’“”•–—\x98™\x9a›\x9c¯˛\x9f\xa0¡¢£¤¥¦§Ø©Ŗ«¬\xad®Æ°±²³´µ¶·ø¹ŗ»¼½¾æĄĮĀĆÄÅĘĒČÉŹĖĢĶĪĻŠŃŅÓŌÕÖ×ŲŁŚŪÜŻŽßąįāćäåęēčéźėģķīļšńņóōõö÷ųłśūüżž˙', true],
  ['iso-8859-2', C1_CONTROLS + '\xa0Ą˘Ł¤ĽŚ§¨ŠŞŤŹ\xadŽŻ°ą˛ł´ľśˇ¸šşťź˝žżŔÁÂĂÄĹĆÇČÉĘËĚÍÎĎĐŃŇÓÔŐÖ×ŘŮÚŰÜÝŢßŕáâăäĺćçčéęëěíîďđńňóôőö÷řůúűüýţ˙', false],
  ['macroman', 'ÄÅÇÉÑÖÜáàâäãåçéèêëíìîïñóòôöõúùûü†°¢£§•¶ß®©™´¨≠ÆØ∞±≤≥¥µ∂∑∏π∫ªºΩæø¿¡¬√ƒ≈∆«»…\xa0ÀÃÕŒœ–—“”‘’÷◊ÿŸ⁄€‹›ﬁﬂ‡·‚„‰ÂÊÁËÈÍÎÏÌÓÔ\uf8ffÒÚÛÙıˆ˜¯˘˙˚¸˝˛ˇ', false],
  ['cp437', 'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\xa0', false],
];

interface CodePage {
  name: string;
  sloppy: boolean;
  /** character → byte, for every character this page can write */
  encode: Map<string, number>;
}

const CODE_PAGE_TABLES: CodePage[] = CODE_PAGES.map(([name, high, sloppy]) => {
  const encode = new Map<string, number>();
  for (let b = 0; b < 0x80; b++) if (b !== 0x1a) encode.set(String.fromCharCode(b), b);
  encode.set(sloppy ? '\ufffd' : '\x1a', 0x1a);
  [...high].forEach((c, i) => encode.set(c, 0x80 + i));
  return { name, sloppy, encode };
});

/** The text as a "byte string" (one char per byte, U+0000–U+00FF), or undefined if a char has no byte. */
function encodeIn(page: CodePage, text: string): string | undefined {
  let bytes = '';
  for (const c of text) {
    const b = page.encode.get(c);
    if (b === undefined) return undefined;
    bytes += String.fromCharCode(b);
  }
  return bytes;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const toBytes = (byteString: string): Uint8Array => Uint8Array.from(byteString, (c) => c.charCodeAt(0));

// Strict UTF-8, plus what ftfy's "utf-8-variants" accepts when the bytes hold 0xC0 or 0xED: C0 80 as
// NUL (Java's modified UTF-8) and a CESU-8 surrogate pair as the character it encodes.
function decodeUtf8(byteString: string): string | undefined {
  const variants = /\xc0\x80|\xed[\xa0-\xaf][\x80-\xbf]\xed[\xb0-\xbf][\x80-\xbf]/g;
  try {
    if (!/[\xc0\xed]/.test(byteString)) return UTF8.decode(toBytes(byteString));
    let out = '';
    let start = 0;
    for (const m of byteString.matchAll(variants)) {
      out += UTF8.decode(toBytes(byteString.slice(start, m.index)));
      const b = toBytes(m[0]);
      out += m[0].length === 2 ? '\0'
        : String.fromCodePoint(0x10000 + ((b[1]! & 0x0f) << 16) + ((b[2]! & 0x3f) << 10) + ((b[4]! & 0x0f) << 6) + (b[5]! & 0x3f));
      start = m.index + m[0].length;
    }
    return out + UTF8.decode(toBytes(byteString.slice(start)));
  } catch {
    return undefined;
  }
}

// A UTF-8 sequence whose 0xA0 byte turned into a space (text that went through a no-break-space
// "cleanup"); and sequences where a byte was lost ("?" or 0x1A) — those become U+FFFD.
const ALTERED_UTF8 = new RegExp([
  '[\\xc2\\xc3\\xc5\\xce\\xd0\\xd9][ ]',
  '[\\xe2\\xe3][ ][\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf]',
  '[\\xe0-\\xe3][\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf][ ]',
  '[\\xf0][ ][\\x80-\\xbf][\\x80-\\xbf]',
  '[\\xf0][\\x80-\\xbf][ ][\\x80-\\xbf]',
  '[\\xf0][\\x80-\\xbf][\\x80-\\xbf][ ]',
].join('|'), 'g');
const LOSSY_UTF8 = new RegExp([
  '[\\xc2-\\xdf][\\x1a]',
  '[\\xc2-\\xc3][?]',
  '\\xed[\\xa0-\\xaf][\\x1a?]\\xed[\\xb0-\\xbf][\\x1a?\\x80-\\xbf]',
  '\\xed[\\xa0-\\xaf][\\x1a?\\x80-\\xbf]\\xed[\\xb0-\\xbf][\\x1a?]',
  '[\\xe0-\\xef][\\x1a?][\\x1a\\x80-\\xbf]',
  '[\\xe0-\\xef][\\x1a\\x80-\\xbf][\\x1a?]',
  '[\\xf0-\\xf4][\\x1a?][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf]',
  '[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a?][\\x1a\\x80-\\xbf]',
  '[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf][\\x1a?]',
  '\\x1a',
].join('|'), 'g');

function restoreByteA0(bytes: string): string {
  bytes = bytes.replace(/\xc3 (?! |quele|quela|quilo|s )/g, '\xc3\xa0 ');
  return bytes.replace(ALTERED_UTF8, (m) => m.replace(/ /g, '\xa0'));
}

function fixEncoding(text: string): string {
  for (;;) {
    const fixed = fixEncodingOnce(text);
    if (fixed === text) return text;
    text = fixed;
  }
}

function fixEncodingOnce(text: string): string {
  if (/^[\x00-\x7f]*$/.test(text) || !isBad(text)) return text;
  // The first code page that can write the text and whose bytes then read as UTF-8 wins.
  for (const page of CODE_PAGE_TABLES) {
    let bytes = encodeIn(page, text);
    if (bytes === undefined) continue;
    if (page.name !== 'macroman' && bytes.search(ALTERED_UTF8) >= 0) bytes = restoreByteA0(bytes);
    if (page.sloppy) bytes = bytes.replace(LOSSY_UTF8, '\xef\xbf\xbd');
    const decoded = decodeUtf8(bytes);
    if (decoded !== undefined) return decoded;
  }
  // Mojibake next to correct text: fix the mojibake runs one by one.
  if (UTF8_DETECTOR.test(text)) {
    const fixed = text.replace(UTF8_DETECTOR_ALL, (run) => (run.length < text.length && isBad(run) ? fixEncoding(run) : run));
    if (fixed !== text) return fixed;
  }
  // Latin-1 text with C1 controls was meant as Windows-1252. Upstream decodes it strictly, which fails on
  // the five bytes Windows-1252 leaves undefined; then C1 controls are fixed one by one — the same result.
  return fixC1Controls(text);
}

// ---------------------------------------------------------------------------------------------------
// The badness heuristic: character sequences that are rare in real text and common in mojibake.
// Character groups as ftfy 6.3.1 defines them.
const G = {
  common: '\xa0\xad·´–—―…’',
  c1: '\x80-\x9f',
  bad: '¦¤¨¬¯¸ƒˆˇ˘˛˜†‡‰⌐◊\ufffdªº',
  law: '¶§',
  currency: '¢£¥₧€',
  start: '¡«¿©΄΅‘‚“„•‹\uf8ff',
  end: '®»˝”›™',
  numeric: '²³¹±¼½¾×µ÷⁄∂∆∏∑√∞∩∫≈≠≡≤≥№',
  kaomoji: 'Ò-ÖÙ-Üò-öø-üŐŌŪŲ°',
  upper: 'À-ÑØÜÝĂĀĄĆČĎĐĘĚĒĖĞĢİĪĶĹĽŁĻŃŇŅŒŘŚŞŠŢŤŮŰŸŹŻŽҐ',
  lower: 'ßà-ñăąāćčďđęěēėğģįīķĺľłļœŕśşšťüźżžґﬁﬂ',
  upperCommon: 'ÞΑ-ΩΆΈΉΊΌΎΏΪΫЁ-Я',
  lowerCommon: 'α-ωάέήίΰа-џ',
  box: '│┌┐┘├┤┬┼═-╬▀▄█▌▐░▒▓',
};
// Python's \s and \w (str patterns), which the heuristic is written with.
const PY_SPACE = '\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_WORD = '\\p{L}\\p{N}_';
const { common, c1, bad, law, currency, start, end, numeric, kaomoji, upper, lower, upperCommon, lowerCommon, box } = G;
const BADNESS = new RegExp([
  `[${c1}]`,
  `[${bad}${lower}${upper}${box}${start}${end}${currency}${numeric}${law}][${bad}]`,
  `[a-zA-Z][${lowerCommon}${upperCommon}][${bad}]`,
  `[${bad}][${lower}${upper}${box}${start}${end}${currency}${numeric}${law}]`,
  `[${lower}${lowerCommon}${box}${end}${currency}${numeric}][${upper}]`,
  `[${box}${end}${currency}${numeric}][${lower}]`,
  `[${lower}${box}${end}][${currency}]`,
  `[${PY_SPACE}][${upper}][${currency}]`,
  `[${upper}${box}][${numeric}${law}]`,
  `[${lower}${upper}${box}${currency}${end}][${start}][${numeric}]`,
  `[${lower}${upper}${currency}${numeric}${box}${law}][${end}][${start}]`,
  `[${currency}${numeric}${box}][${start}]`,
  `[a-z][${upper}][${start}${currency}]`,
  `[${box}][${kaomoji}]`,
  `[${lower}${upper}${currency}${numeric}${start}${end}${law}][${box}]`,
  `[${box}][${end}]`,
  `[${lower}${upper}][${start}${end}][${PY_WORD}]`,
  '[Œœ][^A-Za-z]',
  `[${upper}]°`,
  `[ÂÃÎÐ][€œŠš¢£Ÿž\\xa0\\xad®©°·»${start}${end}–—´]`,
  '×[²³]',
  `[ØÙ][${common}${currency}${bad}${numeric}${start}ŸŠ®°µ»][ØÙ][${common}${currency}${bad}${numeric}${start}ŸŠ®°µ»]`,
  'à[²µ¹¼½¾]',
  '√[±∂†≠®™´≤≥¥µø]',
  '≈[°¢]',
  '‚Ä[ìîïòôúùû†°¢π]',
  '‚[âó][àä°ê]',
  'вЂ',
  `[ВГРС][${c1}${bad}${start}${end}${currency}°µ][ВГРС]`,
  'ГўВЂВ[^\\n][A-Za-z ]',
  'Ã[\\xa0¡]',
  `[a-z][${PY_SPACE}]?[ÃÂ][ ]`,
  '^[ÃÂ][ ]',
  `[a-z.,?!${end}]Â[ ${start}${end}]`,
  'β€[™\\xa0Ά\\xad®°]',
  `[ΒΓΞΟ][${c1}${bad}${start}${end}${currency}°][ΒΓΞΟ]`,
  'ā€',
].join('|'), 'u');

/** ftfy.badness.is_bad: does the text hold a sequence that looks like mojibake? */
export function isBad(text: string): boolean {
  return BADNESS.test(text);
}

// Runs of what reads as UTF-8 lead + continuation bytes in one of the code pages above.
const UTF8_CLUES = {
  first2: 'ĂÂÄĀÅÃÆĆČÇĎĐÉĚÊËĖÈĒĘÐĞĢÍÎÏİÌĪĶĹĻŁŃŇŅÑÓÔÖŐÒŌØÕŘŚŠŞŢÞÚÛÜŰÙŪŲŮÝŹŽŻß×ΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩΪΫάέήίВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ',
  first3: 'áăâäàāąåãæćčçďéěêëėèēęģíîïìīįķĺļŕźΰαβγδεζηθικλμνξοабвгдежзийклмноп',
  first4: 'đðğóšπσру',
  continuation: '\\x80-¿ ĄÆĽŁØŖŚŠŞŤŸŹŽŻŒąæƒľłøŗśšşťźžżœˆˇ˘˛˜˝΄΅ΆΈΉΊΌΎΏЁЂЃЄЅІЇЈЉЊЋЌЎЏёђѓєѕіїјљњћќўџҐґ–—―‘’‚“”„†‡•…‰‹›€№™',
  strictContinuation: '\\x80-¿ĄÆĽŁØŖŚŠŞŤŸŹŽŻŒąæƒľłøŗśšşťźžżœˆˇ˘˛˜˝΄΅ΆΈΉΊΌΎΏЁЂЃЄЅІЇЈЉЊЋЌЎЏёђѓєѕіїјљњћќўџҐґ†‡‰‹›€№™',
};
const { first2, first3, first4, continuation, strictContinuation } = UTF8_CLUES;
const UTF8_DETECTOR_SOURCE =
  `(?<![${strictContinuation}])(?:[${first2}][${continuation}]|[${first3}][${continuation}]{2}|[${first4}][${continuation}]{3})+`;
const UTF8_DETECTOR = new RegExp(UTF8_DETECTOR_SOURCE, 'u');
const UTF8_DETECTOR_ALL = new RegExp(UTF8_DETECTOR_SOURCE, 'gu');
