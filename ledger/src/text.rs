//! Text that someone else chose (a file name in a refusal, a field of an
//! entry), made safe to show on a terminal or a page.

/// Characters that must never reach a terminal raw from text an attacker
/// may have chosen (file names in a refusal, fields of a forged entry):
/// controls (C0, DEL, C1) and the bidirectional overrides that reorder what
/// is shown.
pub fn hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with [`hostile`] characters escaped (`\u{1b}`): what the CLI
/// prints, the C ABI returns as error text and the browser build shows.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if hostile(c) {
                c.escape_unicode().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}
