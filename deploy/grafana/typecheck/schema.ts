// Grafana's Dashboard type (@grafana/schema) as a dashboard JSON file spells it.
//
// The schema declares some fields as TypeScript enums (FieldColorModeId, VariableHide,
// DashboardCursorSync...), which no JSON value can be assigned to. JsonOf<T> replaces each
// enum by the union of its literal values ("palette-classic" | "thresholds" | ..., 0 | 1 | 2)
// and leaves every other field's type as Grafana declares it.
import type { Dashboard } from '@grafana/schema';

// Distributes over the members of a numeric enum: VariableHide -> 0 | 1 | 2 | 3.
type NumberLiteral<T> = T extends number
  ? `${T}` extends `${infer N extends number}`
    ? N
    : never
  : never;

export type JsonOf<T> = T extends string
  ? string extends T
    ? string
    : `${T}`
  : T extends number
    ? `${number}` extends `${T}`
      ? number
      : NumberLiteral<T>
    : T extends boolean | null | undefined
      ? T
      : T extends ReadonlyArray<infer U>
        ? Array<JsonOf<U>>
        : T extends object
          ? { [K in keyof T]: JsonOf<T[K]> }
          : T;

export type DashboardJson = JsonOf<Dashboard>;
