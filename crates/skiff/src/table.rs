//! The CLI's plain-text tables (`skiff vm ls`, `image ls`, `network ls`): columns padded to
//! their widest cell, two spaces apart, no trailing spaces.

/// Renders `rows` (the header first), every row with the same number of cells.
pub fn render<R: AsRef<[String]>>(rows: &[R]) -> String {
    let columns = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r.as_ref()[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_their_widest_cell() {
        let rows = vec![
            vec!["NAME".to_owned(), "STATE".to_owned()],
            vec!["web-1".to_owned(), "running".to_owned()],
        ];
        assert_eq!(render(&rows), "NAME   STATE\nweb-1  running\n");
        assert_eq!(render::<Vec<String>>(&[]), "");
    }
}
