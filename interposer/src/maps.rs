//! The process's mappings, as `/proc/self/maps` lists them.

/// One line of the maps file: `start-end perms offset dev inode [path]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping<'a> {
    pub start: usize,
    pub end: usize,
    /// `rw-p` and the like.
    pub perms: &'a str,
    pub inode: &'a str,
    /// Empty for an anonymous mapping; `[heap]`, `[stack]` or a file's path.
    pub path: &'a str,
}

impl Mapping<'_> {
    pub fn is_readable(&self) -> bool {
        self.perms.starts_with('r')
    }

    pub fn is_writable(&self) -> bool {
        self.perms.get(1..2) == Some("w")
    }

    /// Private, read-write, backed by no file and no special name: where
    /// pymalloc's arenas and big blocks live.
    pub fn is_private_anonymous(&self) -> bool {
        self.perms == "rw-p" && self.inode == "0" && self.path.is_empty()
    }
}

/// The maps file's text (empty when it cannot be read).
pub fn read() -> String {
    crate::fds::read_to_string("/proc/self/maps").unwrap_or_default()
}

/// The mappings of a maps file's text, in its order (by address); lines
/// that do not parse are left out.
pub fn parse(maps: &str) -> impl Iterator<Item = Mapping<'_>> {
    maps.lines().filter_map(parse_line)
}

fn parse_line(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.splitn(6, ' ').filter(|f| !f.is_empty());
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let inode = fields.nth(2)?;
    let path = fields.next().map_or("", str::trim);
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (end > start).then_some(Mapping { start, end, perms, inode, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Option<Mapping<'_>> {
        parse(line).next()
    }

    #[test]
    fn fields_and_paths_are_read_whatever_the_padding() {
        let m = one("55d0c0a2e000-55d0c0b4f000 rw-p 00000000 00:00 0                          [heap]").unwrap();
        assert_eq!((m.start, m.end, m.perms, m.inode, m.path), (0x55d0c0a2e000, 0x55d0c0b4f000, "rw-p", "0", "[heap]"));
        let m = one("7f00a000-7f00b000 r-xp 00001000 08:01 1234   /usr/lib/with space/libc.so.6").unwrap();
        assert_eq!(m.path, "/usr/lib/with space/libc.so.6");
        assert_eq!(one("7f00a000-7f00b000 rw-p 00000000 00:00 0").unwrap().path, "");
        assert_eq!(one("not a mapping"), None);
    }

    #[test]
    fn only_private_anonymous_read_write_mappings_are_anonymous() {
        let anonymous = |line| one(line).is_some_and(|m| m.is_private_anonymous());
        assert!(anonymous("7f00a000-7f00b000 rw-p 00000000 00:00 0 "));
        assert!(anonymous("7f00a000-7f00b000 rw-p 00000000 00:00 0"));
        assert!(!anonymous("55d000-57e000 rw-p 00000000 00:00 0      [heap]"));
        assert!(!anonymous("7f00a000-7f00b000 r--p 00000000 00:00 0"));
        assert!(!anonymous("7f00a000-7f00b000 rw-p 00001000 08:01 1234   /usr/lib/libc.so.6"));
        assert!(!anonymous("7f00a000-7f00b000 rw-s 00000000 00:01 5 /dev/zero (deleted)"));
    }
}
